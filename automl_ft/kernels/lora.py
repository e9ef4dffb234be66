"""Fused LoRA linear layer: ``y = x @ W.T + bias + scaling * (dropout(x) @ A.T) @ B.T``, forward and backward.

Three layers, as everywhere in ``automl_ft/kernels/``: private ``@triton.jit`` kernels, host launchers that check,
allocate and launch (:func:`lora_forward`, :func:`lora_backward`), and :class:`LoRALinearFunction`; the public
dispatcher :func:`lora_linear` picks the backend. The PyTorch reference is :func:`.reference.lora_linear_reference`.

Design (H100, bf16, M=8192 tokens, K=N=4096, r=16; FLOP/byte figures are arithmetic, **no GPU timing measured yet**)
------------------------------------------------------------------------------------------------------------------
The floor is the frozen layer alone: the forward GEMM and the dx GEMM of backward, 2 x 2*M*N*K = 550 GFLOP, about
0.8 ms with cuBLAS. LoRA adds little in FLOPs (2*M*r*(K+N) per product, 1.1 GFLOP at r=16) but PEFT pays for it in
memory passes of 64 MB each (x, dy, the M x N low-rank output and its add, with dropout a copy of x and a mask):
about 8-10 extra passes, ~0.25-0.35 ms. Here the big GEMMs stay plain, pipelined GEMMs and every low-rank piece is
either a skinny pass (M x r results) or an epilogue of a GEMM:

Forward (2 launches):
  1. ``_lora_xa_kernel``, the skinny pre-pass: ``xa_s = scaling/(1-p) * (mask * x) @ A.T`` (M x r, x's dtype, 256 KB
     at the target). The Philox mask is generated exactly once per x element, here (one read of x: 64 MB, ~25 us).
     ``xa_s`` is saved for backward (dB needs it), so nothing else ever regenerates the forward's dropout product.
  2. ``_lora_fwd_kernel``: ``y = x @ W.T`` (a plain tiled, L2-grouped Triton GEMM, nothing but x and W in its K
     loop) with the epilogue ``y += xa_s @ B.T + bias``.
  Before (issue 14), the low-rank product rode in the GEMM's K loop and, with dropout, every N tile regenerated the
  mask of its x tile: configs without serialised wgmma (ptxas C7515) needed BLOCK_N * N_TILES <= 256, i.e. each
  mask was rebuilt 16-32 times at N=4096, and a K step had 589 PTX instructions (sm_90a, 128x128x64; 146 without
  dropout at 128x256x64), ~14 thread-instructions per x element per N tile. Now the forward's K step is 117
  instructions (128x256x64) with or without dropout, and the pre-pass spends ~20 per x element once (1284 per
  64x128 step, 4 warps). Figures: bench/results/lora-sm90a-ptx-2026-12-03.json.
Backward (2 launches + torch sums of small partials):
  1. ``_lora_bwd_dyb_db_kernel``, skinny: one read of dy (64 MB) gives both ``dyB = dy @ B`` (M x r) and
     ``dB = dy.T @ xa_s`` (N x r). Partials (fp32, summed by torch: deterministic, no atomics): dB per 128-row
     block, 64 x N x r (16.8 MB at the target), and dyB per column split (a few x M x r, ~2.6 MB).
  2. ``_lora_bwd_dx_kernel``: ``dx = dy @ W`` (a plain GEMM again) with the epilogue, per x tile:
     ``dx += mask * (dyB_s @ A)`` and the dA partial ``dyB_s.T @ (mask * x)`` (one read of x, one mask generation
     per element; dyB_s = scaling/(1-p) * dyB). Before, ``dy @ B`` was accumulated inside the dx loop, and its
     extra wgmma made every config end each iteration with ``wgmma.wait_group 0``: no overlap of loads and tensor-core
     work. Now the loop ends with ``wait_group 1`` (pipelined) in every config compiled (124 instructions per step at
     128x64x128, was 150), see the PTX report.
  Extra memory traffic over the floor at the target: one x read and one dy read (~50 us) plus ~40 MB of partials
  (~15 us): ~7 % of the 0.8 ms floor, plus the low-rank MMAs in the epilogues (~1 %) and whatever the Triton GEMM
  loses to cuBLAS. That last term is why there is a second backend:
Backends: ``"triton"`` runs both big GEMMs in Triton as above. ``"addmm"`` runs them in cuBLAS (``torch.addmm`` /
``torch.mm``) and the low-rank pieces as the same Triton kernels in epilogue-only mode (``BASE_GEMM=False``: the
kernel loads the cuBLAS output tile instead of computing it), paying an M x N read + write per GEMM (~80 us at the
target) to use cuBLAS's GEMM. ``"auto"`` on CUDA times both once per shape (fwd + bwd, cached) and logs the choice;
on a CPU it is the reference. ``bench/bench_lora.py`` lists both beside PEFT and the floor.

Dropout: Philox (``tl.randint4x``) keyed by (seed, row, column) of x, so the mask is a pure function of the element
and is regenerated (once per element per pass) instead of stored. One Philox4x32-10 call gives eight 16-bit uniforms,
i.e. 8 elements (keep iff u16 >= round(p * 65536): keep probability exact to 1.5e-5). The counter is the 64-bit
linear index ``row * ceil(K/8) + column/8`` split over Philox's first two 32-bit counter words: truncating it to 32
bits (as before issue 10) repeated the masks once M*K >= 2**35. All pointer offsets are int64 (row and column indices
are widened before they meet a stride), so a weight or activation with more than 2**31 elements is addressed right.

GPU constraints respected although only the interpreter and the sm_90a compiler ran here: every ``tl.dot`` dimension
is >= 16 (the rank is padded to R_PAD = max(16, next_pow2(r)) with masked loads; tests keep r = 1 and 3), fp32 inputs
use ``input_precision="ieee"`` unless ``torch.backends.cuda.matmul.allow_tf32`` is on (torch's matmul rule),
accumulation is fp32 and outputs are cast on store. ``AUTOML_FT_SINGLE_CONFIG=1`` makes every autotuned kernel use
the first config that fits in shared memory (no benchmarking; issue 14 reports ~30 s of compile per specialisation),
for the first, short GPU runs (``bench/gpu.sh``).
"""

from __future__ import annotations

import logging
import math
import time

import torch

from automl_ft.errors import KernelUnavailableError

from ._backend import TRITON_INTERPRETER, max_configs, resolve_backend
from .reference import lora_linear_reference

try:  # triton ships with torch's CUDA builds; without it only backend="torch" works
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

MAX_RANK = 256
LORA_BACKENDS = ("auto", "triton", "addmm", "torch")
# Philox4x32 rounds: 10 is the Random123 default (7 already passes BigCrush); the knob if the mask costs too much.
_PHILOX_ROUNDS = 10
# Dropout compares a 16-bit uniform against round(p * 2**16).
_DROPOUT_BITS = 16
# Shared memory a config may plan to use (H100: 227 KiB per block; keep some for the epilogue's layout shuffles).
_SMEM_BUDGET = 200 * 1024
# Rows per program of the skinny backward pass. Fixed (not autotuned) because it sizes the dB partials:
# M/128 x N x r fp32 = 16.8 MB at the target shape; 64 rows would double that, 256 would starve 132 SMs.
_SKINNY_BM = 16 if TRITON_INTERPRETER else 128
# Columns of dy per split of the skinny pass, at least (under the interpreter small, so tests cover several splits).
_SPLIT_COLS = 32 if TRITON_INTERPRETER else 256

_log = logging.getLogger("automl_ft.kernels")


# ---------------------------------------------------------------------------------------------------------------------
# Configurations. Under the interpreter, one small config (autotune cannot bench several there); its tiles are
# smaller than the test shapes so that several programs and ragged edges are exercised.
# ---------------------------------------------------------------------------------------------------------------------
def _cfg(bm, bn, bk, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


def _fwd_configs():
    if TRITON_INTERPRETER:
        return [_cfg(16, 32, 16, 4, 1, group_m=2)]
    # The usual H100 bf16 GEMM tiles (Triton tutorial 03 / Liger); the first is the AUTOML_FT_SINGLE_CONFIG choice.
    return [
        _cfg(128, 256, 64, 8, 3),
        _cfg(256, 128, 64, 8, 3),
        _cfg(128, 128, 64, 8, 4),
        _cfg(128, 128, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 32, 4, 3),  # fits any rank up to 256
    ]


def _dx_configs():
    # BLOCK_K is the width of the dx tile (output), BLOCK_N the reduction step over dy's columns.
    if TRITON_INTERPRETER:
        return [_cfg(16, 16, 32, 4, 1, group_m=2)]
    return [
        _cfg(128, 64, 256, 8, 3),
        _cfg(128, 64, 128, 8, 4),
        _cfg(256, 64, 128, 8, 3),
        _cfg(128, 64, 64, 8, 4),
        _cfg(64, 64, 128, 4, 4),
        _cfg(64, 32, 64, 4, 3),  # fits any rank up to 256
    ]


def _xa_configs():
    # Skinny [M, r] = (mask * x) @ A.T, memory-bound on x: 64 rows = 128 programs at M=8192, one 512 KB x panel each.
    if TRITON_INTERPRETER:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_K": 128}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),  # fits any rank up to 256
    ]


def _skinny_configs():
    # Skinny backward pass over dy: BLOCK_M is fixed (_SKINNY_BM), BLOCK_N is the step over dy's columns.
    if TRITON_INTERPRETER:
        return [triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=4),
    ]


def _prune(smem_of):
    """``early_config_prune``: drop configs whose pipelined tiles overflow shared memory (big ranks, fp32); with
    ``AUTOML_FT_SINGLE_CONFIG=1`` keep only the first that fits, so the autotuner compiles and benches nothing else
    (``AUTOML_FT_MAX_CONFIGS=N``: the first N)."""

    def prune(configs, nargs, **kwargs):
        args = {**nargs, **kwargs}
        es = (args["x_ptr"] if "x_ptr" in args else args["dy_ptr"]).element_size()
        fits = [c for c in configs if smem_of(c.kwargs, args, es) * c.num_stages <= _SMEM_BUDGET]
        if not fits:
            fits = [min(configs, key=lambda c: smem_of(c.kwargs, args, es) * c.num_stages)]
        limit = max_configs()
        return fits[:limit] if limit else fits

    return prune


def _fwd_smem(kw, args, es):  # per pipeline stage: x tile and W tile (the epilogue's xa/B tiles are not pipelined)
    if not args.get("BASE_GEMM", True):
        return 0
    return (kw["BLOCK_M"] * kw["BLOCK_K"] + kw["BLOCK_K"] * kw["BLOCK_N"]) * es


def _dx_smem(kw, args, es):  # per pipeline stage: dy tile and W tile
    if not args.get("DX_GEMM", True):
        return 0
    return (kw["BLOCK_M"] * kw["BLOCK_N"] + kw["BLOCK_N"] * kw["BLOCK_K"]) * es


def _xa_smem(kw, args, es):  # per pipeline stage: x tile and A tile
    return (kw["BLOCK_M"] * kw["BLOCK_K"] + kw["BLOCK_K"] * args["R_PAD"]) * es


def _skinny_smem(kw, args, es):  # per pipeline stage: dy tile, B tile
    return (_SKINNY_BM * kw["BLOCK_N"] + kw["BLOCK_N"] * args["R_PAD"]) * es


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
        # tensor: (n, h*w)); contiguous tensors have rows_inner = M, stride_b = 0. int64: M * stride may pass 2**31.
        r = rows.to(tl.int64)
        return (r // rows_inner) * stride_b + (r % rows_inner) * stride_m

    @triton.jit
    def _dropout_keep(seed, rows, k0, K, threshold, BLOCK_K: tl.constexpr, ROUNDS: tl.constexpr):
        """Keep-mask of x[rows, k0:k0+BLOCK_K], a pure function of (seed, row, column): any tiling gives the same
        mask. One Philox call per 8 consecutive columns (k0 and BLOCK_K are multiples of 8); its four 32-bit words
        are split into eight 16-bit uniforms, element 8g+j taking half j%2 of word j//2.

        The counter is the 64-bit index of the 8-column group; ``tl.randint4x`` puts its low and high halves into
        Philox's counter words c0 and c1 (for indices below 2**32 exactly the masks of a 32-bit counter). A
        ``.to(uint32)`` here made elements 2**35 apart share a mask (issue 10)."""
        groups = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        counters = rows.to(tl.int64)[:, None] * ((K + 7) // 8) + groups[None, :]
        r0, r1, r2, r3 = tl.randint4x(seed, counters, ROUNDS)
        lo = 0xFFFF
        u = tl.interleave(
            tl.interleave(tl.interleave(r0 & lo, r2 & lo), tl.interleave(r1 & lo, r3 & lo)),
            tl.interleave(tl.interleave(r0 >> 16, r2 >> 16), tl.interleave(r1 >> 16, r3 >> 16)),
        )
        return u.to(tl.int32) >= threshold

    @triton.jit
    def _lora_dropout_mask_kernel(seed_ptr, out_ptr, M, K, row0, threshold,
                                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROUNDS: tl.constexpr):
        # Debug/test helper: materialises exactly the mask the LoRA kernels regenerate, for rows row0 .. row0+M-1.
        local = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        k0 = tl.program_id(1) * BLOCK_K
        cols = k0 + tl.arange(0, BLOCK_K)
        keep = _dropout_keep(tl.load(seed_ptr), row0 + local.to(tl.int64), k0, K, threshold, BLOCK_K, ROUNDS)
        ok = (local < M)[:, None] & (cols < K)[None, :]
        tl.store(out_ptr + local.to(tl.int64)[:, None] * K + cols[None, :], keep.to(tl.int8), mask=ok)

    @triton.autotune(configs=_xa_configs(), key=["M_KEY", "K", "R_PAD", "HAS_DROPOUT"],
                     prune_configs_by={"early_config_prune": _prune(_xa_smem)})
    @triton.jit
    def _lora_xa_kernel(
        x_ptr, a_ptr, xa_ptr, seed_ptr,
        M, K, R, M_KEY,
        x_rows_inner, stride_xb, stride_xm, stride_xk, stride_ar, stride_ak,
        lora_scale, drop_threshold,
        HAS_DROPOUT: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUNDS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """xa[m-tile, :R] = lora_scale * (mask * x[m-tile]) @ A.T, rounded to x's dtype once (PEFT's x_d @ A.T is a
        bf16 tensor too); the only place the forward draws the dropout mask."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        x_rows = x_ptr + _row_offsets(rows, x_rows_inner, stride_xb, stride_xm)[:, None]
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        a_rows = a_ptr + offs_r.to(tl.int64)[None, :] * stride_ar
        seed = 0
        if HAS_DROPOUT:
            seed = tl.load(seed_ptr)
        xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            x = tl.load(x_rows + ks.to(tl.int64)[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            if HAS_DROPOUT:
                keep = _dropout_keep(seed, rows, k0, K, drop_threshold, BLOCK_K, ROUNDS)
                x = tl.where(keep, x, tl.zeros_like(x))
            a = tl.load(a_rows + ks.to(tl.int64)[:, None] * stride_ak, mask=k_ok[:, None] & r_ok[None, :], other=0.0)
            xa = tl.dot(x, a, xa, input_precision=DOT_PRECISION)
        out = xa_ptr + rows.to(tl.int64)[:, None] * R + offs_r[None, :]
        tl.store(out, (xa * lora_scale).to(xa_ptr.dtype.element_ty), mask=row_ok[:, None] & r_ok[None, :])

    @triton.autotune(configs=_fwd_configs(), key=["M_KEY", "N", "K", "R_PAD", "HAS_BIAS", "BASE_GEMM"],
                     prune_configs_by={"early_config_prune": _prune(_fwd_smem)},
                     restore_value=["y_ptr"])
    @triton.jit
    def _lora_fwd_kernel(
        x_ptr, w_ptr, bias_ptr, xa_ptr, b_ptr, y_ptr,
        M, N, K, R, M_KEY,
        x_rows_inner, stride_xb, stride_xm, stride_xk,
        stride_wn, stride_wk, stride_bn, stride_br, stride_ym, stride_yn,
        HAS_BIAS: tl.constexpr, BASE_GEMM: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        """y[m-tile, n-tile] = x @ W.T (BASE_GEMM; else the tile already in y, from cuBLAS) + xa @ B.T + bias."""
        pid = tl.program_id(0)
        pid_m, pid_n = _grouped_pid(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
        if BASE_GEMM:
            # A plain GEMM: nothing but the x and W tiles in the K loop, so the loads pipeline behind the wgmma.
            x_rows = x_ptr + _row_offsets(rows, x_rows_inner, stride_xb, stride_xm)[:, None]
            w_cols = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
                k_ok = ks < K
                x = tl.load(x_rows + ks[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_cols + ks[:, None] * stride_wk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
                acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.load(y_ptrs, mask=row_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        xa = tl.load(xa_ptr + rows.to(tl.int64)[:, None] * R + offs_r[None, :],
                     mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        # B.T tile [R_PAD, BLOCK_N]; padded ranks load zeros, so they add nothing.
        bt = tl.load(b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn + offs_r[:, None] * stride_br,
                     mask=r_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(xa, bt, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])

    @triton.autotune(configs=_skinny_configs(), key=["M_KEY", "N", "R_PAD", "COMPUTE_DYB", "COMPUTE_DB"],
                     prune_configs_by={"early_config_prune": _prune(_skinny_smem)})
    @triton.jit
    def _lora_bwd_dyb_db_kernel(
        dy_ptr, b_ptr, xa_ptr, dyb_part_ptr, db_part_ptr,
        M, N, R, M_KEY,
        dy_rows_inner, stride_dyb, stride_dym, stride_dyn, stride_bn, stride_br,
        COMPUTE_DYB: tl.constexpr, COMPUTE_DB: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One read of dy[m-block, column split] gives dyB = dy @ B (partial per split, slot pid_s) and
        dB = dy.T @ xa (partial per row block, slot pid_m); fp32 partials, summed by torch."""
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        dy_rows = dy_ptr + _row_offsets(rows, dy_rows_inner, stride_dyb, stride_dym)[:, None]
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        n_chunk = tl.cdiv(tl.cdiv(N, tl.num_programs(1)), BLOCK_N) * BLOCK_N
        n_start = pid_s * n_chunk
        n_end = min(n_start + n_chunk, N)
        xa = tl.zeros((BLOCK_M, R_PAD), dtype=dy_ptr.dtype.element_ty)
        if COMPUTE_DB:
            xa = tl.load(xa_ptr + rows.to(tl.int64)[:, None] * R + offs_r[None, :],
                         mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        dyb = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
        for n0 in range(n_start, n_end, BLOCK_N):
            ns = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            n_ok = ns < n_end
            dy = tl.load(dy_rows + ns[None, :] * stride_dyn, mask=row_ok[:, None] & n_ok[None, :], other=0.0)
            if COMPUTE_DYB:
                bm = tl.load(b_ptr + ns[:, None] * stride_bn + offs_r[None, :] * stride_br,
                             mask=n_ok[:, None] & r_ok[None, :], other=0.0)
                dyb = tl.dot(dy, bm, dyb, input_precision=DOT_PRECISION)
            if COMPUTE_DB:
                db = tl.dot(tl.trans(dy), xa, input_precision=DOT_PRECISION)  # [BLOCK_N, R_PAD]
                out = db_part_ptr + (pid_m.to(tl.int64) * N + ns)[:, None] * R + offs_r[None, :]
                tl.store(out, db, mask=n_ok[:, None] & r_ok[None, :])
        if COMPUTE_DYB:
            out = dyb_part_ptr + (pid_s.to(tl.int64) * M + rows)[:, None] * R + offs_r[None, :]
            tl.store(out, dyb, mask=row_ok[:, None] & r_ok[None, :])

    @triton.autotune(configs=_dx_configs(), key=["M_KEY", "N", "K", "R_PAD", "HAS_DROPOUT", "DX_GEMM",
                                                 "COMPUTE_DX", "COMPUTE_DA"],
                     prune_configs_by={"early_config_prune": _prune(_dx_smem)},
                     restore_value=["dx_ptr"])
    @triton.jit
    def _lora_bwd_dx_kernel(
        dy_ptr, x_ptr, w_ptr, a_ptr, dyb_ptr, dx_ptr, da_part_ptr, seed_ptr,
        M, N, K, R, M_KEY,
        dy_rows_inner, stride_dyb, stride_dym, stride_dyn,
        x_rows_inner, stride_xb, stride_xm, stride_xk,
        stride_wn, stride_wk, stride_ar, stride_ak, stride_dxm, stride_dxk,
        drop_threshold,
        HAS_DROPOUT: tl.constexpr, DX_GEMM: tl.constexpr, COMPUTE_DX: tl.constexpr, COMPUTE_DA: tl.constexpr,
        R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUNDS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        """dx[m-tile, k-tile] = dy @ W (DX_GEMM; else the tile already in dx, from cuBLAS) + mask * (dyB_s @ A),
        and the dA partial dyB_s.T @ (mask * x) of this tile (slot pid_m). dyB_s already holds scaling/(1-p)."""
        pid = tl.program_id(0)
        pid_m, pid_k = _grouped_pid(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        k0 = pid_k * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        offs_k64 = offs_k.to(tl.int64)
        offs_r = tl.arange(0, R_PAD)
        r_ok = offs_r < R
        tile_ok = row_ok[:, None] & k_ok[None, :]
        dx_ptrs = dx_ptr  # dx is None when only dA is wanted
        if COMPUTE_DX:
            dx_ptrs = dx_ptr + rows.to(tl.int64)[:, None] * stride_dxm + offs_k64[None, :] * stride_dxk

        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        if COMPUTE_DX:
            if DX_GEMM:
                # A plain GEMM over dy's columns (dy @ B is the skinny pass's job), so the loop pipelines.
                dy_rows = dy_ptr + _row_offsets(rows, dy_rows_inner, stride_dyb, stride_dym)[:, None]
                w_cols = w_ptr + offs_k64[None, :] * stride_wk
                for n0 in range(0, N, BLOCK_N):
                    ns = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
                    n_ok = ns < N
                    dy = tl.load(dy_rows + ns[None, :] * stride_dyn, mask=row_ok[:, None] & n_ok[None, :],
                                 other=0.0)
                    w = tl.load(w_cols + ns[:, None] * stride_wn, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                    acc = tl.dot(dy, w, acc, input_precision=DOT_PRECISION)
            else:
                acc = tl.load(dx_ptrs, mask=tile_ok, other=0.0).to(tl.float32)

        # Epilogue: the only read of x in backward and the only mask generation, shared by dx and dA.
        dyb = tl.load(dyb_ptr + rows.to(tl.int64)[:, None] * R + offs_r[None, :],
                      mask=row_ok[:, None] & r_ok[None, :], other=0.0)  # [BLOCK_M, R_PAD]
        at = tl.load(a_ptr + offs_r[:, None].to(tl.int64) * stride_ar + offs_k64[None, :] * stride_ak,
                     mask=r_ok[:, None] & k_ok[None, :], other=0.0)  # A tile [R_PAD, BLOCK_K]
        if HAS_DROPOUT:
            keep = _dropout_keep(tl.load(seed_ptr), rows, k0, K, drop_threshold, BLOCK_K, ROUNDS)
        if COMPUTE_DX:
            if HAS_DROPOUT:
                low = tl.dot(dyb, at, input_precision=DOT_PRECISION)
                acc += tl.where(keep, low, tl.zeros_like(low))
            else:
                acc = tl.dot(dyb, at, acc, input_precision=DOT_PRECISION)
            tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=tile_ok)
        if COMPUTE_DA:
            x_rows = x_ptr + _row_offsets(rows, x_rows_inner, stride_xb, stride_xm)[:, None]
            x = tl.load(x_rows + offs_k64[None, :] * stride_xk, mask=tile_ok, other=0.0)
            if HAS_DROPOUT:
                x = tl.where(keep, x, tl.zeros_like(x))
            da = tl.dot(tl.trans(dyb), x, input_precision=DOT_PRECISION)  # [R_PAD, BLOCK_K]
            da_ptrs = da_part_ptr + (pid_m.to(tl.int64) * R + offs_r[:, None]) * K + offs_k64[None, :]
            tl.store(da_ptrs, da, mask=r_ok[:, None] & k_ok[None, :])


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


def _check_base(base: str) -> None:
    if base not in ("triton", "addmm"):
        raise ValueError(f"lora_linear: unknown base GEMM {base!r}; choose 'triton' or 'addmm'")


# Winning dx config per autotune key (see lora_backward: its BLOCK_M sizes the dA partial-sum buffer).
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
                      device: torch.device | str | None = None, block: tuple[int, int] = (32, 64),
                      row_offset: int = 0) -> torch.Tensor:
    """The ``{0, 1}`` keep-mask (``[rows, cols]``, bool) that the kernels regenerate for x viewed as ``[rows, cols]``.

    For tests and debugging: pass it to ``lora_linear_reference(..., dropout_mask=...)`` to get the reference
    with exactly the kernels' dropout. ``block`` only changes the launch (the mask must not depend on it).
    ``row_offset`` gives the mask of rows ``row_offset .. row_offset + rows - 1`` of a (possibly huge) x with ``cols``
    columns without materialising the rows before them.
    """
    if isinstance(seed, torch.Tensor) and device is None:
        device = seed.device
    device = torch.device(device or "cpu")
    _require_triton(device)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"lora_dropout_mask: p must be in [0, 1), got {p}")
    if row_offset < 0:
        raise ValueError(f"lora_dropout_mask: row_offset must be >= 0, got {row_offset}")
    bm, bk = block
    if bk % 8:
        raise ValueError("lora_dropout_mask: block[1] must be a multiple of 8")
    out = torch.empty((rows, cols), dtype=torch.int8, device=device)
    if rows and cols:
        grid = (triton.cdiv(rows, bm), triton.cdiv(cols, bk))
        _lora_dropout_mask_kernel[grid](_seed_tensor(seed, device), out, rows, cols, int(row_offset),
                                        _dropout_threshold(p), BLOCK_M=bm, BLOCK_K=bk, ROUNDS=_PHILOX_ROUNDS)
    return out.bool()


def lora_xa(x: torch.Tensor, lora_a: torch.Tensor, scaling: float, dropout_p: float = 0.0,
            seed: torch.Tensor | int | None = None) -> torch.Tensor:
    """The skinny pre-pass: ``scaling / (1 - p) * (mask * x) @ lora_a.T`` as ``[M, r]`` in x's dtype (M = x's rows).

    Forward adds ``xa @ B.T`` in its epilogue; backward reuses it for ``dB = dy.T @ xa``.
    """
    _require_triton(x.device, x.dtype)
    if dropout_p > 0 and seed is None:
        raise ValueError("lora_xa: dropout_p > 0 needs a seed (see draw_dropout_seed)")
    xb, m, inner, sxb, sxm, sxk = _rows_view(x)
    k, r = x.shape[-1], lora_a.shape[0]
    a = lora_a.to(x.dtype)
    xa = torch.empty((m, r), device=x.device, dtype=x.dtype)
    if m:
        has_dropout = dropout_p > 0
        _lora_xa_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](
            xb, a, xa, _seed_tensor(seed, x.device) if has_dropout else None,
            m, k, r, _m_key(m),
            inner, sxb, sxm, sxk, a.stride(0), a.stride(1),
            float(scaling) / (1.0 - dropout_p), _dropout_threshold(dropout_p),
            HAS_DROPOUT=has_dropout, R_PAD=_rank_pad(r), DOT_PRECISION=_dot_precision(x.dtype), ROUNDS=_PHILOX_ROUNDS,
        )
    return xa


def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                 lora_b: torch.Tensor, scaling: float, dropout_p: float = 0.0,
                 seed: torch.Tensor | int | None = None, *, base: str = "triton",
                 return_xa: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward; dropout is active iff ``dropout_p > 0`` (then ``seed`` is required).

    ``base="triton"`` computes ``x @ W.T`` in the Triton GEMM, ``"addmm"`` in ``torch.addmm`` (cuBLAS), the
    low-rank epilogue being the same kernel either way. Adapters are used in x's dtype (like PEFT under autocast);
    the output is ``[..., out]`` in x's dtype; with ``return_xa`` also the pre-pass result (see :func:`lora_xa`).
    """
    _check(x, weight, bias, lora_a, lora_b, dropout_p)
    _check_base(base)
    _require_triton(x.device, x.dtype)
    if dropout_p > 0 and seed is None:
        raise ValueError("lora_forward: dropout_p > 0 needs a seed (see draw_dropout_seed)")
    k, n, r = x.shape[-1], weight.shape[0], lora_a.shape[0]
    xa = lora_xa(x, lora_a, scaling, dropout_p, seed)
    xb, m, inner, sxb, sxm, sxk = _rows_view(x)
    b = lora_b.to(x.dtype)
    if base == "addmm":
        x2d = x.reshape(m, k)
        y = torch.addmm(bias, x2d, weight.t()) if bias is not None else torch.mm(x2d, weight.t())
    else:
        y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m and n:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

        _lora_fwd_kernel[grid](
            xb, weight, bias if base == "triton" else None, xa, b, y,
            m, n, k, r, _m_key(m),
            inner, sxb, sxm, sxk,
            weight.stride(0), weight.stride(1), b.stride(0), b.stride(1), y.stride(0), y.stride(1),
            HAS_BIAS=bias is not None and base == "triton", BASE_GEMM=base == "triton", R_PAD=_rank_pad(r),
            DOT_PRECISION=_dot_precision(x.dtype),
        )
    y = y.view(*x.shape[:-1], n)
    return (y, xa) if return_xa else y


def _num_sms(dev: torch.device) -> int:
    return torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4


def lora_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor,
                  lora_b: torch.Tensor, scaling: float, dropout_p: float = 0.0,
                  seed: torch.Tensor | int | None = None, *, xa: torch.Tensor | None = None, base: str = "triton",
                  needs_dx: bool = True, needs_da: bool = True,
                  needs_db: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dx, d lora_a, d lora_b)`` of :func:`lora_forward` (None where not asked for).

    ``xa`` is the forward's pre-pass result (``return_xa=True``); without it the pre-pass runs again. dx has x's
    shape and dtype; the adapter gradients have the adapters' dtypes (summed in fp32).
    """
    _check(x, weight, None, lora_a, lora_b, dropout_p)
    _check_base(base)
    _require_triton(x.device, x.dtype)
    k, n, r = x.shape[-1], weight.shape[0], lora_a.shape[0]
    if tuple(dy.shape) != (*x.shape[:-1], n):
        raise ValueError(f"lora_backward: dy must be {(*x.shape[:-1], n)}, got {tuple(dy.shape)}")
    if dropout_p > 0 and seed is None:
        raise ValueError("lora_backward: dropout_p > 0 needs the forward's seed")
    dy = dy.to(x.dtype)
    xb, m, x_inner, sxb, sxm, sxk = _rows_view(x)
    dyb_t, _, dy_inner, sdyb, sdym, sdyn = _rows_view(dy)
    dev = x.device
    dx = da = db = None
    if m == 0 or n == 0:
        dx = torch.zeros_like(x) if needs_dx else None
        da = torch.zeros_like(lora_a) if needs_da else None
        db = torch.zeros_like(lora_b) if needs_db else None
        return dx, da, db

    r_pad = _rank_pad(r)
    has_dropout = dropout_p > 0
    lora_scale = float(scaling) / (1.0 - dropout_p)
    seed_t = _seed_tensor(seed, dev) if has_dropout else None
    precision = _dot_precision(x.dtype)
    a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
    if needs_db and xa is None:
        xa = lora_xa(x, lora_a, scaling, dropout_p, seed)

    # 1. One pass over dy: dyB = dy @ B (for dx and dA) and dB = dy.T @ xa. Column splits give the pass enough
    #    programs (2 per SM) when M alone does not; each split adds an M x r fp32 partial (0.5 MB at the target).
    need_dyb = needs_dx or needs_da
    row_blocks = triton.cdiv(m, _SKINNY_BM)
    splits = max(1, min(triton.cdiv(2 * _num_sms(dev), row_blocks), triton.cdiv(n, _SPLIT_COLS))) if need_dyb else 1
    dyb_part = torch.empty((splits, m, r), device=dev, dtype=torch.float32) if need_dyb else None
    db_part = torch.empty((row_blocks, n, r), device=dev, dtype=torch.float32) if needs_db else None
    if need_dyb or needs_db:
        _lora_bwd_dyb_db_kernel[(row_blocks, splits)](
            dyb_t, b, xa, dyb_part, db_part,
            m, n, r, _m_key(m),
            dy_inner, sdyb, sdym, sdyn, b.stride(0), b.stride(1),
            COMPUTE_DYB=need_dyb, COMPUTE_DB=needs_db, R_PAD=r_pad, DOT_PRECISION=precision, BLOCK_M=_SKINNY_BM,
        )
    if needs_db:
        db = db_part.sum(0).to(lora_b.dtype)  # xa already carries scaling / (1 - p)

    # 2. dx = dy @ W (Triton GEMM, or cuBLAS when base="addmm") + mask * (dyB_s @ A), and dA partials, per x tile.
    #    The dA partials' slot count is the tile's BLOCK_M, so the first call per autotune key allocates for the
    #    smallest tile any config may pick (and autotunes); later calls launch the recorded winner directly.
    if need_dyb:
        dyb_s = (dyb_part.sum(0) * lora_scale).to(x.dtype)  # rounded once, like PEFT's (dy @ B) bf16 tensor
        dx_gemm = base == "triton"
        if needs_dx:
            dx = torch.empty((m, k), device=dev, dtype=x.dtype) if dx_gemm else torch.mm(dy.reshape(m, n), weight)
        key = (_m_key(m), n, k, r_pad, has_dropout, dx_gemm, needs_dx, needs_da, x.dtype)
        chosen = _DX_CHOSEN.get(key)
        tiles = [chosen] if chosen is not None else _lora_bwd_dx_kernel.configs
        min_bm = min(c.kwargs["BLOCK_M"] for c in tiles)
        da_part = torch.empty((triton.cdiv(m, min_bm), r, k), device=dev, dtype=torch.float32) if needs_da else None

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"]),)

        launch = _lora_bwd_dx_kernel if chosen is None else _lora_bwd_dx_kernel.fn
        launch[grid](
            dyb_t, xb, weight, a, dyb_s, dx, da_part, seed_t,
            m, n, k, r, _m_key(m),
            dy_inner, sdyb, sdym, sdyn,
            x_inner, sxb, sxm, sxk,
            weight.stride(0), weight.stride(1), a.stride(0), a.stride(1), k, 1,
            _dropout_threshold(dropout_p),
            HAS_DROPOUT=has_dropout, DX_GEMM=dx_gemm, COMPUTE_DX=needs_dx, COMPUTE_DA=needs_da,
            R_PAD=r_pad, DOT_PRECISION=precision, ROUNDS=_PHILOX_ROUNDS,
            **({} if chosen is None else chosen.all_kwargs()),
        )
        if chosen is None:
            chosen = _DX_CHOSEN[key] = _lora_bwd_dx_kernel.best_config
        if needs_da:
            da = da_part[: triton.cdiv(m, chosen.kwargs["BLOCK_M"])].sum(0).to(lora_a.dtype)
    if dx is not None:
        dx = dx.view(x.shape)
    return dx, da, db


class LoRALinearFunction(torch.autograd.Function):
    """Autograd of the fused layer. Saves x, the adapters, the frozen weight, the dropout seed and the M x r
    pre-pass result ``xa`` (256 KB at the target shape): no mask, no dropped copy of x, no M x N tensor."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed, base):
        if seed is not None:
            seed = _seed_tensor(seed, x.device)
        y, xa = lora_forward(x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed, base=base, return_xa=True)
        ctx.save_for_backward(x, weight, lora_a, lora_b, seed if seed is not None else torch.empty(0), xa)
        ctx.scaling, ctx.dropout_p, ctx.base = float(scaling), float(dropout_p), base
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, lora_a, lora_b, seed, xa = ctx.saved_tensors
        needs_dx, _, _, needs_da, needs_db = ctx.needs_input_grad[:5]
        dx, da, db = lora_backward(
            dy, x, weight, lora_a, lora_b, ctx.scaling, ctx.dropout_p, seed if seed.numel() else None, xa=xa,
            base=ctx.base, needs_dx=needs_dx, needs_da=needs_da, needs_db=needs_db,
        )
        return dx, None, None, da, db, None, None, None, None


# backend="auto" on CUDA: the faster of "triton" and "addmm" per shape, timed once (fwd + bwd) and cached.
_AUTO_CHOICE: dict[tuple, str] = {}


def _time_ms(fn, device: torch.device) -> float:
    """Median ms of ``fn``: ``triton.testing.do_bench`` on CUDA (short: ~50 ms per candidate), perf_counter on a CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[1] * 1e3


def auto_base(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
              lora_b: torch.Tensor, dropout_p: float) -> str:
    """``"triton"`` or ``"addmm"``: whichever ran forward + backward faster on this shape (measured once per
    (token bucket, in, out, padded rank, dtype, dropout, bias, device), on random tensors of this shape; logged)."""
    m, k, n, r = math.prod(x.shape[:-1]), x.shape[-1], weight.shape[0], lora_a.shape[0]
    key = (_m_key(m), k, n, _rank_pad(r), x.dtype, dropout_p > 0, bias is not None, str(x.device))
    choice = _AUTO_CHOICE.get(key)
    if choice is not None:
        return choice
    dev, dt = x.device, x.dtype
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):
        xs, dy = torch.randn(m, k, device=dev, dtype=dt), torch.randn(m, n, device=dev, dtype=dt)
        w, a, b = weight.detach(), lora_a.detach().to(dt), lora_b.detach().to(dt)
        bs = None if bias is None else bias.detach()
        seed = _seed_tensor(0, dev) if dropout_p > 0 else None  # not from torch's generator: the user's stream
        timings = {}
        for base in ("triton", "addmm"):
            def step(base=base):
                _, xa = lora_forward(xs, w, bs, a, b, 1.0, dropout_p, seed, base=base, return_xa=True)
                return lora_backward(dy, xs, w, a, b, 1.0, dropout_p, seed, xa=xa, base=base)

            step()  # compile and autotune outside the timing
            timings[base] = _time_ms(step, dev)
    choice = _AUTO_CHOICE[key] = min(timings, key=timings.get)
    _log.info("lora_linear: backend='auto' picked %s for M~%d K=%d N=%d r=%d %s dropout=%s (fwd+bwd: %s)", choice,
              key[0], k, n, r, str(dt).replace("torch.", ""), dropout_p > 0,
              ", ".join(f"{name} {ms:.3f} ms" for name, ms in timings.items()))
    return choice


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
        backend: ``"triton"`` (all Triton), ``"addmm"`` (cuBLAS for the frozen GEMMs, Triton for the low-rank and
            dropout pieces), ``"torch"`` (reference) or ``"auto"`` (on CUDA the faster of triton/addmm for the
            shape, measured once and cached; elsewhere the reference).

    Returns:
        ``[..., out]`` in x's dtype (the autocast dtype under autocast); differentiable in x, lora_a and lora_b.

    Raises:
        KernelUnavailableError: ``backend="triton"``/``"addmm"`` where the kernels cannot run.
        ValueError: shapes/dtypes that do not fit, or a weight/bias that requires grad with a fused backend.
    """
    chosen = resolve_backend(backend, x.device.type, "lora_linear", choices=LORA_BACKENDS)
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
    if backend == "auto":
        _check(x, weight, bias, lora_a, lora_b, p)
        chosen = auto_base(x, weight, bias, lora_a, lora_b, p)
    seed = draw_dropout_seed(x.device) if p > 0 else None
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, float(scaling), p, seed, chosen)
