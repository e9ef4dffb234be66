"""Fused LoRA linear layer: ``y = x @ W.T + bias + scaling * (dropout(x) @ A.T) @ B.T``, forward and backward.

Three layers, as everywhere in ``kernels/``: private ``@triton.jit`` kernels, host launchers that check, allocate
and launch (:func:`lora_forward`, :func:`lora_backward`), and :class:`LoRALinearFunction`; the public dispatcher
:func:`lora_linear` picks the backend. The PyTorch reference is :func:`.reference.lora_linear_reference`.

Design (H100, bf16, M=8192 tokens, K=N=4096, r=16; FLOP/byte figures are arithmetic, **no GPU timing measured yet**)
------------------------------------------------------------------------------------------------------------------
The floor is the frozen layer alone: the forward GEMM and the dx GEMM of backward, 2 x 2*M*N*K = 550 GFLOP, about
0.8 ms with cuBLAS. Everything LoRA adds is small in FLOPs (2*M*r*(K+N) per product, 1.1 GFLOP at r=16) but PEFT pays
for it in memory passes of 64 MB each (x, dy, the M x N low-rank output and its add, and with dropout a copy of x
and a mask): about 8-10 extra passes, ~0.25-0.35 ms. The kernels here remove those passes:

* Base GEMM in Triton, not cuBLAS + LoRA kernels around it. cuBLAS plus a fused epilogue still needs the low-rank
  product as a separate pass over x (64 MB) and either an M x N write + read for ``addmm``'s C operand (128 MB) or a
  second kernel over y: ~190 MB, ~70 us, ~17 % of the 0.4 ms forward GEMM. Fusing the low-rank product into the
  GEMM's K loop instead costs tensor-core work, not bandwidth: each program recomputes ``x_tile @ A.T`` for its
  rows, i.e. 2*M*K*R_PAD FLOPs per program column of width BLOCK_N * N_TILES, an overhead of
  R_PAD / (BLOCK_N * N_TILES) of the base GEMM: 6.3 % at BLOCK_N=256, 3.1 % with two sub-tiles (N_TILES=2) or at
  BLOCK_N=128 x 4. ``N_TILES`` is autotuned: a program walks N_TILES adjacent output tiles and reuses its low-rank
  accumulator (registers) for all of them, trading that redundancy against grid size (M/128 * N/512 = 512 programs
  at the target shape, 3.9 waves on 132 SMs). This choice must be confirmed by measurement (command in
  ``bench/bench_lora.py``); the GEMM is a standard tiled, L2-grouped (GROUP_M) Triton matmul with autotuned tiles.
* Dropout: Philox (``tl.randint4x``) keyed by (seed, row, column) of x, so the mask is a pure function of the
  element and regenerated wherever needed, never stored. One Philox4x32-10 call gives 4 x 32 bits = eight 16-bit
  uniforms, i.e. 8 elements (keep iff u16 >= round(p * 65536): keep probability exact to 1.5e-5, vs 8-bit in
  FlashAttention). ~70 integer instructions per call, ~12 per element with the compare, on the otherwise idle
  integer pipe. The forward regenerates the mask once per program column: N / (BLOCK_N * N_TILES) = 4-8 times per
  element at the target shape, 1.6-3.2 G int ops, 0.11-0.22 ms *if not hidden* behind the 0.4 ms of wgmma; this is
  the figure most in need of a measurement (fallback: fewer Philox rounds, ``_PHILOX_ROUNDS``).
* Backward, one fused GEMM kernel + one skinny one, saving only x, the adapters (and the frozen weight, a
  parameter) and the seed:
  1. ``_lora_bwd_dx_kernel``, grid over (M, K) output tiles, reduction over N: ``dx = dy @ W`` with
     ``dyB = dy @ B`` accumulated from the same dy tiles (same R_PAD / (BLOCK_K * K_TILES) redundancy as forward);
     epilogue per x tile: regenerate the mask once per x element, ``dx += scaling/(1-p) * mask * (dyB @ A)``, load
     x once and emit per-program partials of ``dA = scaling/(1-p) * dyB.T @ (mask * x)`` and of ``x_d @ A.T``.
     Partials are summed by torch (deterministic, no atomics): 2 x 16.8 MB at r=16, ~13 us.
  2. ``_lora_bwd_db_kernel``: ``dB = scaling * dy.T @ (x_d @ A.T)``, a second pass over dy (64 MB, ~25 us).
  Passes: x once (epilogue of 1), dy twice (GEMM operand in 1, streamed in 2), W once per M row-block (as cuBLAS).
  Estimated budget over the floor at the target, dropout 0: 6 % low-rank MMA + ~5 % memory (dB pass, partials)
  + whatever the Triton GEMM loses to cuBLAS: the 10 % target is tight and needs measuring.

Compiled ahead of time for sm_90a with Triton 3.8's bundled ptxas (no GPU needed; tests/kernels/test_lora_compile.py):
every config lowers to wgmma. Registers per thread without dropout: forward 128x256 tile 202, 128x128 124; dx
128x128 177; dB 72; no spills. With dropout the mask costs ~35-60 registers: forward 128x128 (N_TILES 1-2) and
256x128 still do not spill; the 128x256 and N_TILES=4 forward tiles get ptxas warning C7515 (wgmma serialised) and
the wide dx tiles spill 0.05-2 KB, so the dropout configs the autotuner should pick are forward 128x128 and dx
128x64 (8 bytes of spill). These are compiler facts, not timings.

GPU constraints respected although only the interpreter ran here: every ``tl.dot`` dimension is >= 16 (the rank is
padded to R_PAD = max(16, next_pow2(r)) with masked loads; tests keep r = 1 and 3), fp32 inputs use
``input_precision="ieee"`` unless ``torch.backends.cuda.matmul.allow_tf32`` is on (same rule as torch's matmul),
accumulation is fp32 and the output is cast to x's dtype on store.
"""

from __future__ import annotations

import math

import torch

from automl_ft.errors import KernelUnavailableError

from ._backend import TRITON_INTERPRETER, resolve_backend
from .reference import lora_linear_reference

try:  # triton ships with torch's CUDA builds; without it only backend="torch" works
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

MAX_RANK = 256
# Philox4x32 rounds: 10 is the Random123 default (7 already passes BigCrush); the knob if the mask costs too much.
_PHILOX_ROUNDS = 10
# Dropout compares a 16-bit uniform against round(p * 2**16).
_DROPOUT_BITS = 16
# Shared memory a config may plan to use (H100: 227 KiB per block; keep some for the epilogue's layout shuffles).
_SMEM_BUDGET = 200 * 1024


# ---------------------------------------------------------------------------------------------------------------------
# Configurations. Under the interpreter, one small config (autotune cannot bench several there); its tiles are
# smaller than the test shapes so that several programs, ragged edges and N_TILES/K_TILES > 1 are all exercised.
# ---------------------------------------------------------------------------------------------------------------------
def _cfg(bm, bn, bk, tiles, warps, stages, group_m=8, **names):
    kw = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, **names}
    kw.update(tiles)
    return triton.Config(kw, num_warps=warps, num_stages=stages)


def _fwd_configs():
    if TRITON_INTERPRETER:
        return [_cfg(16, 32, 16, {"N_TILES": 2}, 4, 1, group_m=2)]
    # The usual H100 bf16 GEMM tiles (Triton tutorial / Liger), each with and without a second N sub-tile.
    return [
        _cfg(128, 256, 64, {"N_TILES": 1}, 8, 3),
        _cfg(128, 256, 64, {"N_TILES": 2}, 8, 3),
        _cfg(256, 128, 64, {"N_TILES": 1}, 8, 3),
        _cfg(128, 128, 64, {"N_TILES": 1}, 8, 4),
        _cfg(128, 128, 64, {"N_TILES": 2}, 8, 4),
        _cfg(128, 128, 64, {"N_TILES": 4}, 8, 4),
        _cfg(64, 128, 64, {"N_TILES": 1}, 4, 4),
        _cfg(64, 64, 32, {"N_TILES": 1}, 4, 3),  # fits any rank up to 256
    ]


def _dx_configs():
    # BLOCK_K is the width of the dx tile (output), BLOCK_N the reduction step over dy's columns.
    if TRITON_INTERPRETER:
        return [_cfg(16, 16, 32, {"K_TILES": 2}, 4, 1, group_m=2)]
    return [
        _cfg(128, 64, 256, {"K_TILES": 1}, 8, 3),
        _cfg(128, 64, 128, {"K_TILES": 1}, 8, 4),
        _cfg(128, 64, 128, {"K_TILES": 2}, 8, 4),
        _cfg(256, 64, 128, {"K_TILES": 1}, 8, 3),
        _cfg(128, 64, 128, {"K_TILES": 4}, 8, 4),
        _cfg(128, 64, 64, {"K_TILES": 1}, 4, 4),  # with dropout: the one 128-row tile that does not spill
        _cfg(64, 64, 128, {"K_TILES": 1}, 4, 4),
        _cfg(64, 32, 64, {"K_TILES": 1}, 4, 3),  # fits any rank up to 256
    ]


def _db_configs():
    # Skinny [N, r] = dy.T @ xa, memory-bound on dy. BLOCK_M must divide _db_m_align().
    if TRITON_INTERPRETER:
        return [triton.Config({"BLOCK_N": 32, "BLOCK_M": 16}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 128}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 64}, num_warps=4, num_stages=3),
    ]


def _db_m_align() -> int:
    return 32 if TRITON_INTERPRETER else 256


def _prune(smem_of):
    """``early_config_prune``: drop configs whose pipelined tiles overflow shared memory (big ranks, fp32)."""

    def prune(configs, nargs, **kwargs):
        args = {**nargs, **kwargs}
        es = args["x_ptr"].element_size() if "x_ptr" in args else args["dy_ptr"].element_size()
        fits = [c for c in configs if smem_of(c.kwargs, args["R_PAD"], es) * c.num_stages <= _SMEM_BUDGET]
        if fits:
            return fits
        return [min(configs, key=lambda c: smem_of(c.kwargs, args["R_PAD"], es) * c.num_stages)]

    return prune


def _fwd_smem(kw, r_pad, es):  # per pipeline stage: x tile, W tile, A tile
    return (kw["BLOCK_M"] * kw["BLOCK_K"] + kw["BLOCK_K"] * kw["BLOCK_N"] + kw["BLOCK_K"] * r_pad) * es


def _dx_smem(kw, r_pad, es):  # per pipeline stage: dy tile, W tile, B tile
    return (kw["BLOCK_M"] * kw["BLOCK_N"] + kw["BLOCK_N"] * kw["BLOCK_K"] + kw["BLOCK_N"] * r_pad) * es


def _db_smem(kw, r_pad, es):
    return (kw["BLOCK_N"] * kw["BLOCK_M"] + kw["BLOCK_M"] * r_pad) * es


# ---------------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        # L2 swizzle: GROUP_M row-blocks share each column-block while it is hot in L2 (Triton tutorial 03).
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m
        return pid_m, pid_n

    @triton.jit
    def _row_offsets(rows, rows_inner, stride_b, stride_m):
        # Row m of a [..., C] tensor whose leading dims collapse to two strided dims (e.g. the NHWC view of an NCHW
        # tensor: (n, h*w)); contiguous tensors have rows_inner = M, stride_b = 0.
        r = rows.to(tl.int64)
        return (r // rows_inner) * stride_b + (r % rows_inner) * stride_m

    @triton.jit
    def _dropout_keep(seed, rows, k0, K, threshold, BLOCK_K: tl.constexpr, ROUNDS: tl.constexpr):
        """Keep-mask of x[rows, k0:k0+BLOCK_K], a pure function of (seed, row, column): any tiling gives the same
        mask. One Philox call per 8 consecutive columns (k0 and BLOCK_K are multiples of 8); its four 32-bit words
        are split into eight 16-bit uniforms, element 8g+j taking half j%2 of word j//2."""
        groups = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        counters = rows.to(tl.int64)[:, None] * ((K + 7) // 8) + groups[None, :]
        r0, r1, r2, r3 = tl.randint4x(seed, counters.to(tl.uint32), ROUNDS)
        lo = 0xFFFF
        u = tl.interleave(
            tl.interleave(tl.interleave(r0 & lo, r2 & lo), tl.interleave(r1 & lo, r3 & lo)),
            tl.interleave(tl.interleave(r0 >> 16, r2 >> 16), tl.interleave(r1 >> 16, r3 >> 16)),
        )
        return u.to(tl.int32) >= threshold

    @triton.jit
    def _lora_dropout_mask_kernel(seed_ptr, out_ptr, M, K, threshold,
                                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROUNDS: tl.constexpr):
        # Debug/test helper: materialises exactly the mask the LoRA kernels regenerate.
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        k0 = tl.program_id(1) * BLOCK_K
        cols = k0 + tl.arange(0, BLOCK_K)
        keep = _dropout_keep(tl.load(seed_ptr), rows, k0, K, threshold, BLOCK_K, ROUNDS)
        ok = (rows < M)[:, None] & (cols < K)[None, :]
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], keep.to(tl.int8), mask=ok)

    @triton.jit
    def _fwd_epilogue(acc, xa_lp, b_ptr, bias_ptr, y_ptr, rows, row_ok, offs_n, N, R,
                      stride_bn, stride_br, stride_ym, stride_yn,
                      HAS_BIAS: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
        n_ok = offs_n < N
        offs_r = tl.arange(0, R_PAD)
        # B.T tile [R_PAD, BLOCK_N]; padded ranks load zeros, so they add nothing.
        bt = tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_r[:, None] * stride_br,
                     mask=(offs_r < R)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(xa_lp, bt, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])

    @triton.autotune(configs=_fwd_configs(), key=["M_KEY", "N", "K", "R_PAD", "HAS_DROPOUT", "HAS_BIAS"],
                     prune_configs_by={"early_config_prune": _prune(_fwd_smem)})
    @triton.jit
    def _lora_fwd_kernel(
        x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, y_ptr, seed_ptr,
        M, N, K, R, M_KEY,
        x_rows_inner, stride_xb, stride_xm, stride_xk,
        stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br, stride_ym, stride_yn,
        lora_scale, drop_threshold,
        HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
        ROUNDS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, N_TILES: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        """y[m-tile, N_TILES n-tiles] = x @ W.T + bias + lora_scale * (mask * x) @ A.T @ B.T, x read once per tile."""
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N * N_TILES)
        pid_m, pid_n = _grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M)

        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        x_rows = x_ptr + _row_offsets(rows, x_rows_inner, stride_xb, stride_xm)[:, None]
        offs_k = tl.arange(0, BLOCK_K)
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        n_first = pid_n * BLOCK_N * N_TILES
        offs_n = n_first + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        if HAS_DROPOUT:
            seed = tl.load(seed_ptr)

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < K
            x = tl.load(x_rows + ks[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptr + offs_n[None, :] * stride_wn + ks[:, None] * stride_wk,
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
            a = tl.load(a_ptr + offs_r[None, :] * stride_ar + ks[:, None] * stride_ak,
                        mask=k_ok[:, None] & r_ok[None, :], other=0.0)
            if HAS_DROPOUT:
                keep = _dropout_keep(seed, rows, k0, K, drop_threshold, BLOCK_K, ROUNDS)
                x = tl.where(keep, x, tl.zeros_like(x))
            # The low-rank product rides on the same x tile: x @ A.T never goes to memory.
            xa = tl.dot(x, a, xa, input_precision=DOT_PRECISION)
        # Round like PEFT does (its x @ A.T is a bf16 tensor); lora_scale = scaling / (1 - p) folds dropout's 1/(1-p).
        xa_lp = (xa * lora_scale).to(x_ptr.dtype.element_ty)
        _fwd_epilogue(acc, xa_lp, b_ptr, bias_ptr, y_ptr, rows, row_ok, offs_n, N, R,
                      stride_bn, stride_br, stride_ym, stride_yn, HAS_BIAS, R_PAD, DOT_PRECISION)

        # Further sub-tiles reuse xa from registers: no low-rank recompute, no mask regeneration.
        for t in range(1, N_TILES):
            offs_n = n_first + t * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < N
            if n_first + t * BLOCK_N < N:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for k0 in range(0, K, BLOCK_K):
                    ks = k0 + offs_k
                    k_ok = ks < K
                    x = tl.load(x_rows + ks[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                    w = tl.load(w_ptr + offs_n[None, :] * stride_wn + ks[:, None] * stride_wk,
                                mask=k_ok[:, None] & n_ok[None, :], other=0.0)
                    acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
                _fwd_epilogue(acc, xa_lp, b_ptr, bias_ptr, y_ptr, rows, row_ok, offs_n, N, R,
                              stride_bn, stride_br, stride_ym, stride_yn, HAS_BIAS, R_PAD, DOT_PRECISION)

    @triton.jit
    def _dx_epilogue(acc, dyb_s, x_rows, row_ok, rows, pid_m, k_tile0, seed,
                     a_ptr, dx_ptr, da_part_ptr, K, R, M,
                     stride_xk, stride_ar, stride_ak, stride_dxm, stride_dxk,
                     drop_threshold, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, R_PAD: tl.constexpr,
                     HAS_DROPOUT: tl.constexpr, COMPUTE_DX: tl.constexpr, COMPUTE_DA: tl.constexpr,
                     COMPUTE_XA: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUNDS: tl.constexpr):
        """dx, dA partial and x_d @ A.T partial of one [BLOCK_M, BLOCK_K] tile of x; returns the latter."""
        offs_k = k_tile0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        at = tl.load(a_ptr + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak,
                     mask=r_ok[:, None] & k_ok[None, :], other=0.0)  # A tile [R_PAD, BLOCK_K]
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, rows, k_tile0, K, drop_threshold, BLOCK_K, ROUNDS)
        if COMPUTE_DX:
            if HAS_DROPOUT:
                low = tl.dot(dyb_s, at, input_precision=DOT_PRECISION)
                acc += tl.where(keep, low, tl.zeros_like(low))
            else:
                acc = tl.dot(dyb_s, at, acc, input_precision=DOT_PRECISION)
            dx_ptrs = dx_ptr + rows.to(tl.int64)[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
            tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & k_ok[None, :])
        xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
        if COMPUTE_DA or COMPUTE_XA:
            # The only read of x in backward, shared by dA and by x_d @ A.T (for dB).
            x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            if HAS_DROPOUT:
                x = tl.where(keep, x, tl.zeros_like(x))
            if COMPUTE_DA:
                da = tl.dot(tl.trans(dyb_s), x, input_precision=DOT_PRECISION)  # [R_PAD, BLOCK_K]
                da_ptrs = da_part_ptr + (pid_m * R + offs_r[:, None]).to(tl.int64) * K + offs_k[None, :]
                tl.store(da_ptrs, da, mask=r_ok[:, None] & k_ok[None, :])
            if COMPUTE_XA:
                xa = tl.dot(x, tl.trans(at), input_precision=DOT_PRECISION)
        return xa

    @triton.autotune(configs=_dx_configs(),
                     key=["M_KEY", "N", "K", "R_PAD", "HAS_DROPOUT", "COMPUTE_DX", "COMPUTE_DA", "COMPUTE_XA"],
                     prune_configs_by={"early_config_prune": _prune(_dx_smem)})
    @triton.jit
    def _lora_bwd_dx_kernel(
        dy_ptr, x_ptr, w_ptr, a_ptr, b_ptr, dx_ptr, da_part_ptr, xa_part_ptr, seed_ptr,
        M, N, K, R, M_KEY,
        dy_rows_inner, stride_dyb, stride_dym, stride_dyn,
        x_rows_inner, stride_xb, stride_xm, stride_xk,
        stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br, stride_dxm, stride_dxk,
        lora_scale, drop_threshold,
        HAS_DROPOUT: tl.constexpr, COMPUTE_DX: tl.constexpr, COMPUTE_DA: tl.constexpr, COMPUTE_XA: tl.constexpr,
        R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUNDS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_TILES: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        """dx[m-tile, K_TILES k-tiles] = dy @ W + lora_scale * mask * (dy @ B) @ A, plus per-program partials of
        dA = lora_scale * (dy @ B).T @ (mask * x) (slot pid_m) and of (mask * x) @ A.T (slot pid_k)."""
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_k = tl.cdiv(K, BLOCK_K * K_TILES)
        pid_m, pid_k = _grouped_pid(pid, num_pid_m, num_pid_k, GROUP_M)

        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        dy_rows = dy_ptr + _row_offsets(rows, dy_rows_inner, stride_dyb, stride_dym)[:, None]
        x_rows = x_ptr + _row_offsets(rows, x_rows_inner, stride_xb, stride_xm)[:, None]
        offs_n = tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        k_first = pid_k * BLOCK_K * K_TILES
        offs_k = k_first + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        seed = 0
        if HAS_DROPOUT:
            seed = tl.load(seed_ptr)

        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        dyb = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            ns = n0 + offs_n
            n_ok = ns < N
            dy = tl.load(dy_rows + ns[None, :] * stride_dyn, mask=row_ok[:, None] & n_ok[None, :], other=0.0)
            if COMPUTE_DX:
                w = tl.load(w_ptr + ns[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                            mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                acc = tl.dot(dy, w, acc, input_precision=DOT_PRECISION)
            bm = tl.load(b_ptr + ns[:, None] * stride_bn + offs_r[None, :] * stride_br,
                         mask=n_ok[:, None] & r_ok[None, :], other=0.0)
            dyb = tl.dot(dy, bm, dyb, input_precision=DOT_PRECISION)
        # Scaled and rounded once, like PEFT's (dy @ B) bf16 tensor; reused by every sub-tile's epilogue.
        dyb_s = (dyb * lora_scale).to(dy_ptr.dtype.element_ty)
        xa = _dx_epilogue(acc, dyb_s, x_rows, row_ok, rows, pid_m, k_first, seed, a_ptr, dx_ptr, da_part_ptr,
                          K, R, M, stride_xk, stride_ar, stride_ak, stride_dxm, stride_dxk, drop_threshold,
                          BLOCK_M, BLOCK_K, R_PAD, HAS_DROPOUT, COMPUTE_DX, COMPUTE_DA, COMPUTE_XA, DOT_PRECISION,
                          ROUNDS)

        for t in range(1, K_TILES):
            k_tile0 = k_first + t * BLOCK_K
            if k_tile0 < K:
                offs_k = k_tile0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < K
                acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
                if COMPUTE_DX:
                    for n0 in range(0, N, BLOCK_N):
                        ns = n0 + offs_n
                        n_ok = ns < N
                        dy = tl.load(dy_rows + ns[None, :] * stride_dyn, mask=row_ok[:, None] & n_ok[None, :],
                                     other=0.0)
                        w = tl.load(w_ptr + ns[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                                    mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                        acc = tl.dot(dy, w, acc, input_precision=DOT_PRECISION)
                xa += _dx_epilogue(acc, dyb_s, x_rows, row_ok, rows, pid_m, k_tile0, seed, a_ptr, dx_ptr,
                                   da_part_ptr, K, R, M, stride_xk, stride_ar, stride_ak, stride_dxm, stride_dxk,
                                   drop_threshold, BLOCK_M, BLOCK_K, R_PAD, HAS_DROPOUT, COMPUTE_DX, COMPUTE_DA,
                                   COMPUTE_XA, DOT_PRECISION, ROUNDS)
        if COMPUTE_XA:
            xa_ptrs = xa_part_ptr + (pid_k * M + rows.to(tl.int64))[:, None] * R + offs_r[None, :]
            tl.store(xa_ptrs, xa, mask=row_ok[:, None] & r_ok[None, :])

    @triton.autotune(configs=_db_configs(), key=["M_KEY", "N", "R_PAD"],
                     prune_configs_by={"early_config_prune": _prune(_db_smem)})
    @triton.jit
    def _lora_bwd_db_kernel(
        dy_ptr, xa_ptr, db_part_ptr,
        M, N, R, M_KEY, m_chunk,
        dy_rows_inner, stride_dyb, stride_dym, stride_dyn,
        R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
        """db_part[split, n-tile, :] = dy[m-chunk, n-tile].T @ xa[m-chunk, :] in fp32; torch sums the splits."""
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        acc = tl.zeros((BLOCK_N, R_PAD), dtype=tl.float32)
        m_start = pid_s * m_chunk
        m_end = min(m_start + m_chunk, M)
        for m0 in range(m_start, m_end, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < m_end
            dy_off = _row_offsets(rows, dy_rows_inner, stride_dyb, stride_dym)
            dyt = tl.load(dy_ptr + dy_off[None, :] + offs_n[:, None] * stride_dyn,
                          mask=n_ok[:, None] & row_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_M]
            xa = tl.load(xa_ptr + rows.to(tl.int64)[:, None] * R + offs_r[None, :],
                         mask=row_ok[:, None] & r_ok[None, :], other=0.0)
            acc = tl.dot(dyt, xa, acc, input_precision=DOT_PRECISION)
        out = db_part_ptr + (pid_s * N + offs_n.to(tl.int64))[:, None] * R + offs_r[None, :]
        tl.store(out, acc, mask=n_ok[:, None] & r_ok[None, :])


# ---------------------------------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------------------------------
def _require_triton(device: torch.device, dtype: torch.dtype | None = None) -> None:
    if triton is None:  # pragma: no cover - depends on the install
        raise KernelUnavailableError("lora_linear: the triton package is not installed; use backend='torch'")
    if device.type != "cuda" and not (device.type == "cpu" and TRITON_INTERPRETER):
        raise KernelUnavailableError(
            f"lora_linear: the Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors "
            f"(got {device.type}); use backend='torch'")
    if dtype == torch.bfloat16 and device.type == "cpu":
        raise KernelUnavailableError(
            "lora_linear: Triton's interpreter computes bf16 wrongly; on the CPU use fp32/fp16 or backend='torch'")


def _rank_pad(r: int) -> int:
    return max(16, triton.next_power_of_2(r))  # tl.dot needs every dimension >= 16 on NVIDIA GPUs


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's matmul rule: exact unless the user opted into TF32.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _m_key(m: int) -> int:
    # Autotune per power-of-two bucket of tokens, so variable batch/sequence lengths don't re-tune every step.
    return triton.next_power_of_2(max(int(m), 1))


def _dropout_threshold(p: float) -> int:
    return round(p * (1 << _DROPOUT_BITS))


# Winning dx config per autotune key (see lora_backward: it sizes the partial-sum buffers).
_DX_CHOSEN: dict[tuple, object] = {}


def _rows_view(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int, int]:
    """Describe ``t`` (``[..., C]``, any strides) as rows x columns without copying when possible.

    Element (m, c) lives at ``base + (m // inner) * stride_b + (m % inner) * stride_m + c * stride_c``. Leading
    dims are merged while their strides chain; two groups are supported (this covers contiguous tensors, transposed
    batches and the NHWC view of an NCHW tensor that :class:`LoRAConv1x1` passes); anything else is copied.

    Returns:
        ``(base, M, inner, stride_b, stride_m, stride_c)``.
    """
    lead = [(s, st) for s, st in zip(t.shape[:-1], t.stride()[:-1]) if s != 1]
    m = math.prod(t.shape[:-1])
    groups: list[list[int]] = []  # [size, stride], innermost first
    for size, stride in reversed(lead):
        if groups and stride == groups[-1][0] * groups[-1][1]:
            groups[-1][0] *= size
        else:
            groups.append([size, stride])
    if len(groups) > 2:
        t = t.contiguous()
        return t, m, max(m, 1), 0, t.shape[-1], 1
    if not groups:
        return t, m, max(m, 1), 0, 0, t.stride(-1)
    inner, stride_m = groups[0]
    stride_b = groups[1][1] if len(groups) == 2 else 0
    return t, m, inner, stride_b, stride_m, t.stride(-1)


def _check(x, weight, bias, lora_a, lora_b, dropout_p):
    if x.dim() < 1:
        raise ValueError("lora_linear: x must have at least one dimension [..., in]")
    k = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"lora_linear: weight must be [out, in={k}], got {tuple(weight.shape)}")
    n = weight.shape[0]
    if lora_a.dim() != 2 or lora_a.shape[1] != k or not 1 <= lora_a.shape[0] <= MAX_RANK:
        raise ValueError(f"lora_linear: lora_a must be [r, in={k}] with r in 1..{MAX_RANK}, got {tuple(lora_a.shape)}")
    r = lora_a.shape[0]
    if tuple(lora_b.shape) != (n, r):
        raise ValueError(f"lora_linear: lora_b must be [out={n}, r={r}], got {tuple(lora_b.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"lora_linear: bias must be [out={n}] or None, got {tuple(bias.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"lora_linear: x must be fp32, fp16 or bf16, got {x.dtype}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"lora_linear: weight/bias dtype must match x ({x.dtype}), got {weight.dtype}"
                         f"{'' if bias is None else '/' + str(bias.dtype)}; cast the layer or use autocast")
    tensors = [weight, lora_a, lora_b] + ([] if bias is None else [bias])
    if any(t.device != x.device for t in tensors):
        raise ValueError("lora_linear: x, weight, bias and adapters must be on the same device")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"lora_linear: dropout_p must be in [0, 1), got {dropout_p}")


def draw_dropout_seed(device: torch.device | str) -> torch.Tensor:
    """A Philox seed drawn from torch's generator of ``device`` (so ``torch.manual_seed`` reproduces runs).

    It stays a 1-element device tensor that the kernels load: drawing it never synchronises with the GPU.
    """
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


def _seed_tensor(seed: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    return torch.tensor([int(seed)], device=device, dtype=torch.int64)


def lora_dropout_mask(seed: int | torch.Tensor, rows: int, cols: int, p: float, *,
                      device: torch.device | str | None = None, block: tuple[int, int] = (32, 64)) -> torch.Tensor:
    """The ``{0, 1}`` keep-mask (``[rows, cols]``, bool) that the kernels regenerate for x viewed as ``[rows, cols]``.

    For tests and debugging: pass it to ``lora_linear_reference(..., dropout_mask=...)`` to get the reference
    with exactly the kernels' dropout. ``block`` only changes the launch (the mask must not depend on it).
    """
    if isinstance(seed, torch.Tensor) and device is None:
        device = seed.device
    device = torch.device(device or "cpu")
    _require_triton(device)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"lora_dropout_mask: p must be in [0, 1), got {p}")
    bm, bk = block
    if bk % 8:
        raise ValueError("lora_dropout_mask: block[1] must be a multiple of 8")
    out = torch.empty((rows, cols), dtype=torch.int8, device=device)
    if rows and cols:
        grid = (triton.cdiv(rows, bm), triton.cdiv(cols, bk))
        _lora_dropout_mask_kernel[grid](_seed_tensor(seed, device), out, rows, cols, _dropout_threshold(p),
                                        BLOCK_M=bm, BLOCK_K=bk, ROUNDS=_PHILOX_ROUNDS)
    return out.bool()


def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                 lora_b: torch.Tensor, scaling: float, dropout_p: float = 0.0,
                 seed: torch.Tensor | int | None = None) -> torch.Tensor:
    """Launch the fused forward; dropout is active iff ``dropout_p > 0`` (then ``seed`` is required).

    Adapters are used in x's dtype (like PEFT under autocast); the output is ``[..., out]`` in x's dtype.
    """
    _check(x, weight, bias, lora_a, lora_b, dropout_p)
    _require_triton(x.device, x.dtype)
    if dropout_p > 0 and seed is None:
        raise ValueError("lora_forward: dropout_p > 0 needs a seed (see draw_dropout_seed)")
    xb, m, inner, sxb, sxm, sxk = _rows_view(x)
    k, n, r = x.shape[-1], weight.shape[0], lora_a.shape[0]
    a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m and n:
        has_dropout = dropout_p > 0
        lora_scale = float(scaling) / (1.0 - dropout_p)
        seed_t = _seed_tensor(seed, x.device) if has_dropout else None

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"] * meta["N_TILES"]),)

        _lora_fwd_kernel[grid](
            xb, weight, bias, a, b, y, seed_t,
            m, n, k, r, _m_key(m),
            inner, sxb, sxm, sxk,
            weight.stride(0), weight.stride(1), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            y.stride(0), y.stride(1),
            lora_scale, _dropout_threshold(dropout_p),
            HAS_BIAS=bias is not None, HAS_DROPOUT=has_dropout, R_PAD=_rank_pad(r),
            DOT_PRECISION=_dot_precision(x.dtype), ROUNDS=_PHILOX_ROUNDS,
        )
    return y.view(*x.shape[:-1], n)


def lora_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor,
                  lora_b: torch.Tensor, scaling: float, dropout_p: float = 0.0,
                  seed: torch.Tensor | int | None = None, *, needs_dx: bool = True, needs_da: bool = True,
                  needs_db: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dx, d lora_a, d lora_b)`` of :func:`lora_forward` (None where not asked for).

    dx has x's shape and dtype; the adapter gradients have the adapters' dtypes (summed in fp32).
    """
    _check(x, weight, None, lora_a, lora_b, dropout_p)
    _require_triton(x.device, x.dtype)
    k, n, r = x.shape[-1], weight.shape[0], lora_a.shape[0]
    if tuple(dy.shape) != (*x.shape[:-1], n):
        raise ValueError(f"lora_backward: dy must be {(*x.shape[:-1], n)}, got {tuple(dy.shape)}")
    if dropout_p > 0 and seed is None:
        raise ValueError("lora_backward: dropout_p > 0 needs the forward's seed")
    dy = dy.to(x.dtype)
    xb, m, x_inner, sxb, sxm, sxk = _rows_view(x)
    dyb, _, dy_inner, sdyb, sdym, sdyn = _rows_view(dy)
    a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
    dev = x.device
    if m == 0 or n == 0:
        dx = torch.zeros_like(x) if needs_dx else None
        da = torch.zeros_like(lora_a) if needs_da else None
        db = torch.zeros_like(lora_b) if needs_db else None
        return dx, da, db

    r_pad = _rank_pad(r)
    has_dropout = dropout_p > 0
    inv_keep = 1.0 / (1.0 - dropout_p)
    seed_t = _seed_tensor(seed, dev) if has_dropout else None
    precision = _dot_precision(x.dtype)

    # 1. dx, dA partials and (x_d @ A.T) partials. The partials' slot counts depend on the tile, so the first call per
    #    autotune key allocates for the smallest tiles any config may pick (and autotunes); later calls launch the
    #    recorded winner directly and allocate exactly (16.8 MB each at the target shape instead of 33.5 MB).
    dx = torch.empty((m, k), device=dev, dtype=x.dtype) if needs_dx else None
    key = (_m_key(m), n, k, r_pad, has_dropout, needs_dx, needs_da, needs_db, x.dtype)
    chosen = _DX_CHOSEN.get(key)
    tiles = [chosen] if chosen is not None else _lora_bwd_dx_kernel.configs
    min_bm = min(c.kwargs["BLOCK_M"] for c in tiles)
    min_kw = min(c.kwargs["BLOCK_K"] * c.kwargs["K_TILES"] for c in tiles)
    da_part = torch.empty((triton.cdiv(m, min_bm), r, k), device=dev, dtype=torch.float32) if needs_da else None
    xa_part = torch.empty((triton.cdiv(k, min_kw), m, r), device=dev, dtype=torch.float32) if needs_db else None

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"] * meta["K_TILES"]),)

    launch = _lora_bwd_dx_kernel if chosen is None else _lora_bwd_dx_kernel.fn
    launch[grid](
        dyb, xb, weight, a, b, dx, da_part, xa_part, seed_t,
        m, n, k, r, _m_key(m),
        dy_inner, sdyb, sdym, sdyn,
        x_inner, sxb, sxm, sxk,
        weight.stride(0), weight.stride(1), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        k, 1,
        float(scaling) * inv_keep, _dropout_threshold(dropout_p),
        HAS_DROPOUT=has_dropout, COMPUTE_DX=needs_dx, COMPUTE_DA=needs_da, COMPUTE_XA=needs_db,
        R_PAD=r_pad, DOT_PRECISION=precision, ROUNDS=_PHILOX_ROUNDS,
        **({} if chosen is None else chosen.all_kwargs()),
    )
    if chosen is None:
        chosen = _DX_CHOSEN[key] = _lora_bwd_dx_kernel.best_config
    cfg = chosen.kwargs
    da = db = None
    if needs_da:
        da = da_part[: triton.cdiv(m, cfg["BLOCK_M"])].sum(0).to(lora_a.dtype)

    # 2. dB = scaling * dy.T @ x_d_A, with x_d_A = (1/(1-p)) * sum of partials, rounded to x's dtype like PEFT's.
    if needs_db:
        xa = (xa_part[: triton.cdiv(k, cfg["BLOCK_K"] * cfg["K_TILES"])].sum(0) * inv_keep).to(x.dtype)
        align = _db_m_align()
        num_sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4
        n_tiles = triton.cdiv(n, 128)
        splits = max(1, min(triton.cdiv(4 * num_sms, n_tiles), triton.cdiv(m, align)))
        m_chunk = triton.cdiv(triton.cdiv(m, splits), align) * align
        splits = triton.cdiv(m, m_chunk)
        db_part = torch.empty((splits, n, r), device=dev, dtype=torch.float32)
        _lora_bwd_db_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)](
            dyb, xa, db_part, m, n, r, _m_key(m), m_chunk,
            dy_inner, sdyb, sdym, sdyn,
            R_PAD=r_pad, DOT_PRECISION=precision,
        )
        db = (db_part.sum(0) * float(scaling)).to(lora_b.dtype)
    if dx is not None:
        dx = dx.view(x.shape)
    return dx, da, db


class LoRALinearFunction(torch.autograd.Function):
    """Autograd of the fused layer. Saves x, the adapters (in x's dtype), the frozen weight and the dropout seed:
    no mask, no x @ A.T, no dropped copy of x."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed):
        if seed is not None:
            seed = _seed_tensor(seed, x.device)
        y = lora_forward(x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed)
        ctx.save_for_backward(x, weight, lora_a, lora_b, seed if seed is not None else torch.empty(0))
        ctx.scaling, ctx.dropout_p = float(scaling), float(dropout_p)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, lora_a, lora_b, seed = ctx.saved_tensors
        needs_dx, _, _, needs_da, needs_db = ctx.needs_input_grad[:5]
        dx, da, db = lora_backward(
            dy, x, weight, lora_a, lora_b, ctx.scaling, ctx.dropout_p, seed if seed.numel() else None,
            needs_dx=needs_dx, needs_da=needs_da, needs_db=needs_db,
        )
        return dx, None, None, da, db, None, None, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``x @ weight.T + bias + scaling * (dropout(x) @ lora_a.T) @ lora_b.T`` (PEFT's unmerged LoRA).

    Args:
        x: ``[..., in]``, fp32/fp16/bf16, any strides. weight: ``[out, in]`` and bias ``[out]`` or None, frozen.
        lora_a: ``[r, in]``, lora_b: ``[out, r]``, r in 1..256 (used in x's dtype; gradients in their own dtype).
        scaling: ``alpha / r``. dropout_p, training: LoRA dropout on the adapter branch, active only when training.
        backend: ``"triton"`` (fused kernels), ``"torch"`` (reference) or ``"auto"`` (triton on CUDA, else torch).

    Returns:
        ``[..., out]`` in x's dtype (the autocast dtype under autocast); differentiable in x, lora_a and lora_b.

    Raises:
        KernelUnavailableError: ``backend="triton"`` where the kernels cannot run.
        ValueError: shapes/dtypes that do not fit, or a weight/bias that requires grad with the Triton backend.
    """
    chosen = resolve_backend(backend, x.device.type, "lora_linear")
    if chosen == "torch":
        return lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling, dropout_p, training)
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        raise ValueError("lora_linear: the fused kernels compute no gradient for weight/bias; freeze them "
                         "(requires_grad_(False)) or use backend='torch'")
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"lora_linear: dropout_p must be in [0, 1), got {dropout_p}")
    p = dropout_p if training else 0.0
    seed = draw_dropout_seed(x.device) if p > 0 else None
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, float(scaling), p, seed)
