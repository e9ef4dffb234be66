"""Fused AdamW step: the Triton kernels and their host launchers (``FusedAdamW`` in ``optim.py`` sits on top).

Why the kernels look like this (the design notes of issue 4, with the numbers behind each choice):

* **A constant number of launches per parameter group, no copies.** One group on one device for one parameter dtype
  (a "bucket") is updated by ``_adamw_prologue_kernel`` (1 program) and ``_adamw_update_kernel`` (1 launch over all
  tensors), plus ``_grad_sumsq_kernel`` when the group clips: 2 launches, 3 with clipping, whether the group holds 1
  tensor or 448. The optimizer states (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, anchors, fp32 masters) live in
  flat buffers that ``FusedAdamW`` owns; ``state_dict()`` shows per-parameter views of them.
  Parameters and gradients stay where PyTorch put them: every tensor is addressed as ``base + offset`` where ``base``
  is one fixed pointer per bucket and the int64 offsets (in elements) sit in a small device-side tile table. So the
  kernels never load a pointer from memory (Triton's interpreter cannot follow those), only integers, and nothing
  is copied: flattening the gradients instead would cost a read and a write of every gradient per step whenever
  ``zero_grad(set_to_none=True)`` (PyTorch's default) or autograd hands us fresh ``.grad`` tensors, i.e. 36 bytes
  per fp32 parameter instead of 28: 29 % more memory traffic on a bandwidth-bound step (by byte count; that design
  was not built). The table is rebuilt only when a data pointer changes; a step whose pointers match the last one
  (gradients at the same addresses, as a caching allocator tends to give them) costs no host-to-device copy, and a
  changed one costs a small non-blocking copy of the table, never a synchronisation.
* **Tiles.** Each program of the update kernel handles one tile: up to ``CHUNK`` contiguous elements of one tensor,
  walked in ``BLOCK``-sized steps. Full blocks are unmasked so that the loads vectorise (a mask compared with a bound
  read from memory has no known alignment, which would force 4-byte accesses); the ragged tail is one masked block.
  When every pointer is 16-byte aligned the offsets are stored divided by ``UNIT`` (16 bytes' worth of elements) and
  multiplied back in the kernel, which is how Triton learns they are multiples of 16 bytes: 128-bit accesses.
* **The step count stays on the device.** ``_adamw_prologue_kernel`` increments the fp32 step of every parameter that
  has a gradient (and only those: a parameter without a gradient keeps its step and states, as in PyTorch), then
  computes each one's bias corrections in fp64, as PyTorch does on the host in Python floats, and for a clipping group
  the global gradient norm (over every group that clips: ``FusedAdamW`` hands all their partial sums to each
  prologue) and ``min(1, max_norm / (norm + 1e-6))``. No ``.item()``, no host synchronisation per
  step. It is a separate launch because the update kernel's programs run in no particular order: a step counter
  incremented inside it would be read before and after the increment by different tiles of one tensor.
  Why fp64 for the bias corrections: ``1 - 0.999 ** 1`` in fp32 is off by 1.3e-5 relative (cancellation), which the
  1e-6 agreement with ``torch.optim.AdamW`` over 100 steps cannot afford. ``beta ** step`` is exponentiation by
  squaring (25 rounds cover every step an fp32 counter can count, 2**24).
* **Gradient clipping folded into the update.** ``_grad_sumsq_kernel`` reads each gradient once (one partial sum per
  tile), the prologue reduces the partials, and the update kernel multiplies the gradient by the coefficient as it
  reads it: 32 bytes per fp32 parameter, against 40 for ``clip_grad_norm_`` (read for the norm, read and write to
  scale) followed by a fused AdamW. The gradients themselves are left untouched.
* **Rounding.** All arithmetic is fp32 (states may be bf16/fp16 without master weights: loaded, upcast, rounded once
  on store). fp32 -> bf16 rounds to nearest even with integer bit operations, the same as ``Tensor.to(bfloat16)``,
  because Triton's interpreter truncates fp32 -> bf16 stores. Divisions and square roots use the IEEE-rounded
  ``div_rn`` / ``sqrt_rn`` (Triton's default ``/`` on CUDA is an approximate division).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Tile table columns (int64): param offset, grad offset, state offset (the three divided by UNIT), valid elements, slot.
TILE_COLS = 5


def adamw_launch_settings(device_type: str) -> tuple[int, int, int]:
    """``(BLOCK, CHUNK, num_warps)`` for the update and norm kernels.

    CUDA: 2048-element blocks over 8 warps give each thread 8 fp32 values, i.e. two 128-bit accesses per stream;
    64 Ki-element tiles make 1,526 programs for 100 M parameters and 640 for the 448 LoRA tensors of a 7B model,
    several per SM of an H100 (132 SMs) so that enough loads are in flight. Not yet tuned on a GPU.
    Interpreter: it runs programs one after another at a fixed cost per operation, so larger blocks are faster;
    1024 / 4096 still puts a 4,097-element tensor over two tiles, four unmasked blocks and a masked tail, which is
    what the tests need to cover.
    """
    if device_type == "cuda":
        return 2048, 65536, 8
    return 1024, 4096, 4


def _launch(kernel, grid, *args, **kwargs) -> None:
    """Every launch goes through here, so tests can count launches per step."""
    kernel[grid](*args, **kwargs)


@triton.jit
def _store_rounded(ptrs, x, mask):
    """Store fp32 ``x`` into ``ptrs``' element type, rounding to nearest even."""
    if ptrs.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        # NaN -> the canonical quiet NaN, as c10::BFloat16 does (the carry could otherwise reach the sign bit).
        rounded = tl.where(x != x, 0x7FC0, rounded)  # noqa: PLR0124 (x != x: NaN)
        tl.store(ptrs, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _adamw_block(base, exp_avg_ptr, exp_avg_sq_ptr, max_sq_ptr, anchor_ptr, master_ptr, p_idx, g_idx, s_idx, mask,
                 step_size, bc2_sqrt, decay, anchor_coef, clip, one_minus_beta1, beta2, one_minus_beta2, eps,
                 AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, CLIP: tl.constexpr, ANCHOR: tl.constexpr,
                 MASTER: tl.constexpr):
    """One block of the update; ``mask`` is None for full blocks so that their accesses vectorise."""
    g = tl.load(base + g_idx, mask=mask).to(tl.float32)
    if CLIP:
        g = g * clip
    if MAXIMIZE:
        g = -g
    if MASTER:
        p = tl.load(master_ptr + s_idx, mask=mask)
    else:
        p = tl.load(base + p_idx, mask=mask).to(tl.float32)
    m = tl.load(exp_avg_ptr + s_idx, mask=mask).to(tl.float32)
    v = tl.load(exp_avg_sq_ptr + s_idx, mask=mask).to(tl.float32)
    # The operation order of torch.optim.AdamW: exp_avg.lerp_(g, 1 - beta1) (weight < 0.5: m + w * (g - m)),
    # exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2), param.mul_(1 - lr * wd).addcdiv_(m, denom, -step_size).
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    _store_rounded(exp_avg_ptr + s_idx, m, mask)
    _store_rounded(exp_avg_sq_ptr + s_idx, v, mask)
    if AMSGRAD:
        v = tl.maximum(tl.load(max_sq_ptr + s_idx, mask=mask).to(tl.float32), v)
        _store_rounded(max_sq_ptr + s_idx, v, mask)
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    new_p = p * decay - step_size * tl.div_rn(m, denom)
    if ANCHOR:
        # L2-SP, decoupled like the weight decay: pull toward the values the optimizer was built with.
        p0 = tl.load(anchor_ptr + s_idx, mask=mask).to(tl.float32)
        new_p = new_p - anchor_coef * (p - p0)
    if MASTER:
        tl.store(master_ptr + s_idx, new_p, mask=mask)
    _store_rounded(base + p_idx, new_p, mask)


@triton.jit
def _adamw_update_kernel(base, tiles_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_sq_ptr, anchor_ptr, master_ptr,
                         coefs_ptr, scalars_ptr, one_minus_beta1, beta2, one_minus_beta2, eps,
                         UNIT: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, CLIP: tl.constexpr,
                         ANCHOR: tl.constexpr, MASTER: tl.constexpr, BLOCK: tl.constexpr):
    """One program per tile: up to CHUNK elements of one tensor, all bucket tensors in one launch."""
    row = tiles_ptr + tl.program_id(0) * 5
    # Offsets are stored divided by UNIT; multiplying back tells Triton they are multiples of UNIT elements.
    p_off = tl.load(row) * UNIT
    g_off = tl.load(row + 1) * UNIT
    s_off = tl.load(row + 2) * UNIT
    n = tl.load(row + 3).to(tl.int32)
    slot = tl.load(row + 4)
    step_size = tl.load(coefs_ptr + 2 * slot)
    bc2_sqrt = tl.load(coefs_ptr + 2 * slot + 1)
    clip = tl.load(scalars_ptr + 1)
    decay = tl.load(scalars_ptr + 2)
    anchor_coef = tl.load(scalars_ptr + 3)
    arange = tl.arange(0, BLOCK)
    n_full = (n // BLOCK) * BLOCK
    for start in range(0, n_full, BLOCK):
        idx = start + arange
        _adamw_block(base, exp_avg_ptr, exp_avg_sq_ptr, max_sq_ptr, anchor_ptr, master_ptr, p_off + idx,
                     g_off + idx, s_off + idx, None, step_size, bc2_sqrt, decay, anchor_coef, clip,
                     one_minus_beta1, beta2, one_minus_beta2, eps, AMSGRAD, MAXIMIZE, CLIP, ANCHOR, MASTER)
    if n_full < n:
        idx = n_full + arange
        _adamw_block(base, exp_avg_ptr, exp_avg_sq_ptr, max_sq_ptr, anchor_ptr, master_ptr, p_off + idx,
                     g_off + idx, s_off + idx, idx < n, step_size, bc2_sqrt, decay, anchor_coef, clip,
                     one_minus_beta1, beta2, one_minus_beta2, eps, AMSGRAD, MAXIMIZE, CLIP, ANCHOR, MASTER)


@triton.jit
def _grad_sumsq_kernel(base, tiles_ptr, partials_ptr, UNIT: tl.constexpr, BLOCK: tl.constexpr):
    """Sum of squared gradient elements of one tile into ``partials[tile]``, accumulated in fp64.

    fp64 because an fp32 sum of thousands of squares drifts by several ulps (4.8e-7 relative on the norm of 5,000
    elements in the interpreter), which the 1e-6 agreement with ``clip_grad_norm_`` followed by AdamW cannot
    afford; the step is memory-bound, so the extra precision costs nothing measurable.
    """
    tile = tl.program_id(0)
    row = tiles_ptr + tile * 5
    g_off = tl.load(row + 1) * UNIT
    n = tl.load(row + 3).to(tl.int32)
    arange = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    n_full = (n // BLOCK) * BLOCK
    for start in range(0, n_full, BLOCK):
        g = tl.load(base + g_off + start + arange).to(tl.float64)
        acc += g * g
    if n_full < n:
        idx = n_full + arange
        g = tl.load(base + g_off + idx, mask=idx < n, other=0.0).to(tl.float64)
        acc += g * g
    tl.store(partials_ptr + tile, tl.sum(acc, axis=0))


@triton.jit
def _adamw_prologue_kernel(steps_ptr, active_ptr, n_active, coefs_ptr, scalars_ptr, partials_ptr, n_partials, lr_ptr,
                           lr: tl.float64, weight_decay: tl.float64, anchor_decay: tl.float64, beta1: tl.float64,
                           beta2: tl.float64, max_norm, LR_FROM_PTR: tl.constexpr, CLIP: tl.constexpr,
                           BLOCK: tl.constexpr):
    """Single program: step += 1 for the parameters with a gradient, their bias corrections, the group scalars.

    Writes ``coefs[2 * slot] = lr / (1 - beta1 ** step)``, ``coefs[2 * slot + 1] = sqrt(1 - beta2 ** step)``
    (fp64, rounded to fp32 once, as PyTorch's Python-float scalars are), and ``scalars = [grad norm, clip
    coefficient, 1 - lr * weight_decay, lr * anchor_decay]``.
    """
    if LR_FROM_PTR:
        lr64 = tl.load(lr_ptr).to(tl.float64)
    else:
        lr64 = tl.full([], 0.0, tl.float64) + lr
    tl.store(scalars_ptr + 2, (1.0 - lr64 * weight_decay).to(tl.float32))
    tl.store(scalars_ptr + 3, (lr64 * anchor_decay).to(tl.float32))
    arange = tl.arange(0, BLOCK)
    if CLIP:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for start in range(0, n_partials, BLOCK):
            idx = start + arange
            acc += tl.load(partials_ptr + idx, mask=idx < n_partials, other=0.0)
        norm = tl.sqrt(tl.sum(acc, axis=0)).to(tl.float32)
        # clip_grad_norm_: clamp(max_norm / (total_norm + 1e-6), max=1.0), in fp32.
        coef = tl.minimum(tl.div_rn(max_norm + tl.zeros_like(norm), norm + 1e-6), 1.0,
                          propagate_nan=tl.PropagateNan.ALL)
        tl.store(scalars_ptr, norm)
        tl.store(scalars_ptr + 1, coef)
    for start in range(0, n_active, BLOCK):
        idx = start + arange
        mask = idx < n_active
        slot = tl.load(active_ptr + idx, mask=mask, other=0)
        step = tl.load(steps_ptr + slot, mask=mask, other=0.0) + 1.0
        tl.store(steps_ptr + slot, step, mask=mask)
        # beta ** step by squaring in fp64: 25 rounds cover every value an fp32 step counter reaches (2**24).
        e = step.to(tl.int32)
        pow1 = tl.full([BLOCK], 1.0, tl.float64)
        pow2 = tl.full([BLOCK], 1.0, tl.float64)
        sq1 = tl.zeros([BLOCK], dtype=tl.float64) + beta1
        sq2 = tl.zeros([BLOCK], dtype=tl.float64) + beta2
        for _ in tl.static_range(25):
            odd = (e & 1) != 0
            pow1 = tl.where(odd, pow1 * sq1, pow1)
            pow2 = tl.where(odd, pow2 * sq2, pow2)
            sq1 = sq1 * sq1
            sq2 = sq2 * sq2
            e = e >> 1
        step_size = lr64 / (1.0 - pow1)
        bc2_sqrt = tl.sqrt(1.0 - pow2)  # fp64: any rounding here is far below the fp32 result's ulp
        tl.store(coefs_ptr + 2 * slot, step_size.to(tl.float32), mask=mask)
        tl.store(coefs_ptr + 2 * slot + 1, bc2_sqrt.to(tl.float32), mask=mask)


# --------------------------------------------------------------------------------------------- host launchers ----


def build_tiles(base: torch.Tensor, params: list[torch.Tensor], grads: list[torch.Tensor], slots: list[int],
                state_offsets: list[int], state_align: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The tile table of one step of a bucket: ``(tiles [T, 5] int64, active slots [K] int32, UNIT)``, on base's device.

    ``params[i]`` / ``grads[i]`` (same dtype as ``base``, same strides as each other, dense) are addressed as
    ``base + offset``; their state lives at ``state_offsets[i]`` of the bucket's flat buffers (multiples of
    ``state_align``). UNIT is 16 bytes' worth of elements when every address is 16-byte aligned, else 1.
    """
    itemsize = base.element_size()
    base_ptr = base.data_ptr()
    offsets: list[tuple[int, int, int, int, int]] = []
    aligned = base_ptr % 16 == 0
    for p, g, slot in zip(params, grads, slots):
        p_bytes, g_bytes = p.data_ptr() - base_ptr, g.data_ptr() - base_ptr
        if p_bytes % itemsize or g_bytes % itemsize:  # pragma: no cover - storages are always itemsize-aligned
            raise RuntimeError("FusedAdamW: a parameter or gradient is not aligned to its element size")
        aligned = aligned and p_bytes % 16 == 0 and g_bytes % 16 == 0
        offsets.append((p_bytes // itemsize, g_bytes // itemsize, state_offsets[slot], p.numel(), slot))
    unit = 16 // itemsize if aligned and (state_align * itemsize) % 16 == 0 else 1
    rows: list[tuple[int, int, int, int, int]] = []
    for p_off, g_off, s_off, numel, slot in offsets:
        for start in range(0, numel, chunk):
            rows.append(((p_off + start) // unit, (g_off + start) // unit, (s_off + start) // unit,
                         min(chunk, numel - start), slot))
    device = base.device
    tiles = torch.tensor(rows, dtype=torch.int64).reshape(-1, TILE_COLS)
    active = torch.tensor(list(slots), dtype=torch.int32)
    if device.type != "cpu":
        # Pageable host memory: CUDA stages it at once, so the copy needs no pinned buffer and no synchronisation.
        tiles = tiles.to(device, non_blocking=True)
        active = active.to(device, non_blocking=True)
    return tiles, active, unit


def grad_sumsq(base: torch.Tensor, tiles: torch.Tensor, unit: int, partials: torch.Tensor) -> None:
    """``partials[t]`` = sum of squares of tile t's gradient elements (``partials`` is fp64), one launch."""
    block, _, num_warps = adamw_launch_settings(base.device.type)
    if tiles.shape[0] == 0:  # only empty tensors: nothing to read (and CUDA rejects an empty grid)
        return
    _launch(_grad_sumsq_kernel, (tiles.shape[0],), base, tiles, partials, UNIT=unit, BLOCK=block,
            num_warps=num_warps)


def adamw_step(base: torch.Tensor, tiles: torch.Tensor, active: torch.Tensor, unit: int, *, steps: torch.Tensor,
               coefs: torch.Tensor, scalars: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               max_exp_avg_sq: torch.Tensor | None, anchor: torch.Tensor | None, master: torch.Tensor | None,
               lr: float | torch.Tensor, beta1: float, beta2: float, eps: float, weight_decay: float,
               anchor_decay: float, maximize: bool, partials: torch.Tensor | None = None,
               max_grad_norm: float | None = None) -> None:
    """One AdamW step of a bucket in two launches: the prologue (steps, bias corrections, clip) and the update.

    ``partials`` (the group's per-tile squared-gradient sums from :func:`grad_sumsq`, fp64) and ``max_grad_norm`` turn on
    clipping. ``lr`` may be a one-element tensor (read on the device). Buffers: ``steps`` [slots] fp32,
    ``coefs`` [2 * slots] fp32, ``scalars`` [4] fp32 scratch, flat states in the state dtype, ``master`` fp32.
    """
    device_type = base.device.type
    block, _, num_warps = adamw_launch_settings(device_type)
    clip = max_grad_norm is not None
    if clip and partials is None:
        raise ValueError("adamw_step: max_grad_norm needs the partial sums of grad_sumsq")
    lr_is_tensor = isinstance(lr, torch.Tensor)
    lr_tensor = lr.to(device=base.device, dtype=torch.float32, non_blocking=True) if lr_is_tensor else steps
    _launch(_adamw_prologue_kernel, (1,), steps, active, active.numel(), coefs, scalars,
            partials if clip else scalars, partials.numel() if clip else 0, lr_tensor,
            0.0 if lr_is_tensor else float(lr), float(weight_decay), float(anchor_decay), float(beta1), float(beta2),
            float(max_grad_norm) if clip else 0.0, LR_FROM_PTR=lr_is_tensor, CLIP=clip, BLOCK=1024, num_warps=4)
    if tiles.shape[0] == 0:  # only empty tensors: their steps are counted, there is nothing to update
        return
    # (1 - beta) in Python floats (fp64) then rounded to fp32, as PyTorch passes them to its fp32 kernels.
    _launch(_adamw_update_kernel, (tiles.shape[0],), base, tiles, exp_avg, exp_avg_sq,
            exp_avg_sq if max_exp_avg_sq is None else max_exp_avg_sq, exp_avg if anchor is None else anchor,
            exp_avg if master is None else master, coefs, scalars, 1.0 - float(beta1), float(beta2),
            1.0 - float(beta2), float(eps), UNIT=unit, AMSGRAD=max_exp_avg_sq is not None, MAXIMIZE=bool(maximize),
            CLIP=clip, ANCHOR=anchor is not None, MASTER=master is not None, BLOCK=block, num_warps=num_warps)
