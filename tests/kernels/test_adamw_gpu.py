"""FusedAdamW's compiled Triton path on CUDA: fp32 against torch.optim.AdamW, bf16 master weights, clipping, the
448-tensor LoRA layout. Skipped without a CUDA device (the interpreter tests in test_adamw.py cover the logic)."""

from __future__ import annotations

import copy

import pytest
import torch
from automl_ft.kernels import FusedAdamW
from automl_ft.kernels import adamw as adamw_kernels

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled Triton path)")]


def _params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to("cuda", dtype)) for s in shapes]


def _grads(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to("cuda", p.dtype)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# Ragged sizes around the CUDA block (2048) and tile (65536) sizes, and a misaligned view.
SHAPES = [(1,), (7,), (1000,), (4097,), (65536 + 3,), (300, 700)]


@pytest.mark.parametrize("options", [{}, {"amsgrad": True}, {"maximize": True, "weight_decay": 0.0}],
                         ids=["plain", "amsgrad", "maximize-no-wd"])
def test_gpu_fp32_matches_torch_adamw_over_100_steps(options):
    params = _params(SHAPES)
    params.append(torch.nn.Parameter(torch.randn(1001, device="cuda")[1:]))  # 4 bytes off alignment
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = FusedAdamW(params, lr=1e-2, backend="triton", **options)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, foreach=False, **options)
    sched = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + 0.05 * s)) for o in (ours, ref)]
    for step in range(100):
        for ps in (params, ref_params):
            _grads(ps, step)
            if step % 5 == 0:
                ps[1].grad = None  # skipped this step
        ours.step()
        ref.step()
        for s in sched:
            s.step()
    for p, q in zip(params, ref_params):
        assert _rel(p, q) <= 1e-6
        for key in ("exp_avg", "exp_avg_sq"):
            assert _rel(ours.state[p][key], ref.state[q][key]) <= 1e-6, key
        assert float(ours.state[p]["step"]) == float(ref.state[q]["step"])


def test_gpu_clipping_matches_clip_grad_norm_then_adamw():
    params = _params(SHAPES, seed=1)
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = FusedAdamW(params, lr=1e-2, max_grad_norm=1.0, backend="triton")
    ref = torch.optim.AdamW(ref_params, lr=1e-2, fused=True)
    for step in range(30):
        _grads(params, step)
        _grads(ref_params, step)
        ours.step()
        norm = torch.nn.utils.clip_grad_norm_(ref_params, 1.0)
        ref.step()
        assert _rel(ours.last_grad_norm(), norm) <= 1e-6
    for p, q in zip(params, ref_params):
        assert _rel(p, q) <= 1e-6


def test_gpu_bf16_master_weights_match_the_reference_bit_for_bit_rounding():
    params = _params(SHAPES, dtype=torch.bfloat16, seed=2)
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = FusedAdamW(params, lr=1e-2, master_weights=True, anchor_decay=0.1, backend="triton")
    ref = FusedAdamW(ref_params, lr=1e-2, master_weights=True, anchor_decay=0.1, backend="torch")
    for step in range(20):
        _grads(params, step)
        _grads(ref_params, step)
        ours.step()
        ref.step()
    for p, q in zip(params, ref_params):
        assert _rel(ours.state[p]["master"], ref.state[q]["master"]) <= 1e-6
        assert torch.equal(p, ours.state[p]["master"].to(torch.bfloat16))
    via_torch = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2)
    via_torch.load_state_dict(copy.deepcopy(ours.state_dict()))  # extra keys (master, anchor) are carried along


def test_gpu_448_lora_tensors_take_two_launches(monkeypatch):
    from automl_ft.bench.bench_adamw import SIZES, lora_shapes

    launches = []
    real = adamw_kernels._launch
    monkeypatch.setattr(adamw_kernels, "_launch", lambda k, g, *a, **kw: (launches.append(k), real(k, g, *a, **kw)))
    shapes = lora_shapes(SIZES["quick"])
    assert len(shapes) == 448
    params = _params(shapes, seed=3)
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = FusedAdamW(params, lr=1e-3, backend="triton")
    ref = torch.optim.AdamW(ref_params, lr=1e-3, fused=True)
    for step in range(3):
        _grads(params, step)
        _grads(ref_params, step)
        launches.clear()
        ours.step()
        ref.step()
        assert len(launches) == 2
    torch.cuda.synchronize()
    for p, q in zip(params, ref_params):
        assert _rel(p, q) <= 1e-6
