"""FusedAdamW against torch.optim.AdamW, clip_grad_norm_ and the AdamW reference, on both backends.

On a machine without CUDA the Triton kernels run in the interpreter (conftest sets TRITON_INTERPRET=1), so the
tensors are small and ragged (1, 7, 1000, 4097 elements: one tile, a masked tail, several tiles and blocks).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from automl_ft.kernels import FusedAdamW, KernelUnavailableError
from automl_ft.kernels import adamw as adamw_kernels
from automl_ft.kernels.reference import adamw_grad_norm_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["triton", "torch"]
SHAPES = [(1,), (7,), (10, 100), (4097,)]


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    """max |actual - expected| <= rel * max |expected|, reporting the worst element."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-30)
    worst = int(err.argmax()) if err.numel() else 0
    rel_err = float(err.max() / scale) if err.numel() else 0.0
    assert rel_err <= rel, (f"{what}: relative error {rel_err:.3g} > {rel:.1g} at flat index {worst}: "
                            f"{actual.flatten()[worst].item()!r} vs {expected.flatten()[worst].item()!r}")


def make_params(shapes=SHAPES, dtype=torch.float32, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(device=DEVICE, dtype=dtype)) for s in shapes]


def clone_params(params: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def backward(params: list[torch.Tensor], step: int, skip=lambda i, step: False) -> None:
    """A real backward pass whose gradient of params[i] is a fixed random tensor; params with skip(i, step) are
    left out of the loss (no gradient with set_to_none, a zero one otherwise)."""
    gen = torch.Generator().manual_seed(1000 + step)
    loss = None
    for i, p in enumerate(params):
        w = torch.randn(p.shape, generator=gen).to(device=p.device, dtype=p.dtype)
        if skip(i, step):
            continue
        term = (w * p).sum()
        loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()


def compare_with_torch(ours: torch.optim.Optimizer, ref: torch.optim.Optimizer, rel: float, states: bool = True):
    for g_ours, g_ref in zip(ours.param_groups, ref.param_groups):
        for i, (p, q) in enumerate(zip(g_ours["params"], g_ref["params"])):
            assert_rel_close(p, q, rel, f"param {i}")
            if not states:
                continue
            s, t = ours.state.get(p, {}), ref.state.get(q, {})
            assert bool(s) == bool(t), f"param {i}: state present {bool(s)} vs torch {bool(t)}"
            for key in t:
                if key == "step":
                    assert float(s["step"]) == float(t["step"]), f"param {i}: step {s['step']} vs {t['step']}"
                else:
                    assert_rel_close(s[key], t[key], rel, f"param {i} {key}")


# ------------------------------------------------------------------------------------ plain AdamW vs torch ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_adamw_over_100_steps(backend):
    params = make_params()
    ref_params = clone_params(params)
    ours = FusedAdamW(params, lr=1e-2, weight_decay=0.1, backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, weight_decay=0.1)
    for step in range(100):
        for ps, opt in ((params, ours), (ref_params, ref)):
            opt.zero_grad()
            backward(ps, step)
            opt.step()
    compare_with_torch(ours, ref, 1e-6)


OPTION_CASES = {
    "amsgrad": {"groups": [{"amsgrad": True}]},
    "maximize": {"groups": [{"maximize": True}]},
    "no-weight-decay": {"groups": [{"weight_decay": 0.0}]},
    "groups": {"groups": [{"lr": 3e-2, "weight_decay": 0.2, "betas": (0.8, 0.99)},
                           {"lr": 1e-3, "weight_decay": 0.0, "betas": (0.95, 0.9), "eps": 1e-6, "amsgrad": True}]},
    "tensor-lr": {"groups": [{}], "tensor_lr": True},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_options_scheduler_and_missing_grads_match_torch(case, backend):
    """Every option, several groups, a LambdaLR schedule, ragged sizes, params that skip steps, both zero_grad modes."""
    spec = OPTION_CASES[case]
    params = make_params(SHAPES + [(3, 5)], seed=1)
    ref_params = clone_params(params)
    n_groups = len(spec["groups"])

    def groups(ps):
        return [dict(params=ps[i::n_groups], **g) for i, g in enumerate(spec["groups"])]

    lr = torch.tensor(1e-2) if spec.get("tensor_lr") else 1e-2
    ours = FusedAdamW(groups(params), lr=lr, backend=backend)
    ref = torch.optim.AdamW(groups(ref_params), lr=copy.deepcopy(lr), foreach=False)
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s)) for opt in (ours, ref)]
    # Param i sits out steps where (i + step) % 3 == 0: with set_to_none=True it has no gradient and is skipped
    # (its step count falls behind), with set_to_none=False its gradient is a zero tensor and it is stepped.
    skip = lambda i, step: (i + step) % 3 == 0
    for step in range(20):
        for ps, opt, sched in ((params, ours, schedules[0]), (ref_params, ref, schedules[1])):
            opt.zero_grad(set_to_none=step % 4 != 1)
            backward(ps, step, skip)
            opt.step()
            sched.step()
    compare_with_torch(ours, ref, 1e-6)
    steps = {float(ours.state[p]["step"]) for p in params}
    assert len(steps) > 1, "no parameter ever skipped a step: the test lost its no-gradient case"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_gradient_is_rejected(backend):
    emb = torch.nn.Embedding(10, 3, sparse=True).to(DEVICE)
    opt = FusedAdamW(emb.parameters(), backend=backend)
    emb(torch.tensor([1, 2], device=DEVICE)).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_unfrozen_later_and_groups_added_later_match_torch(backend):
    """A tensor that first gets a gradient after some steps (the flat state is re-laid) and a group added later."""
    params, head = make_params(seed=2), make_params([(6, 7)], seed=3)
    ref_params, ref_head = clone_params(params), clone_params(head)
    params[2].requires_grad_(False)
    ref_params[2].requires_grad_(False)
    ours = FusedAdamW(params, lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=1e-2)
    for step in range(12):
        if step == 4:
            params[2].requires_grad_(True)
            ref_params[2].requires_grad_(True)
        if step == 7:
            ours.add_param_group({"params": head, "lr": 3e-2, "weight_decay": 0.0})
            ref.add_param_group({"params": ref_head, "lr": 3e-2, "weight_decay": 0.0})
        for ps, opt in ((params + head, ours), (ref_params + ref_head, ref)):
            opt.zero_grad()
            backward([p for p in ps if p.requires_grad], step)
            opt.step()
    compare_with_torch(ours, ref, 1e-6)


def test_misaligned_and_strided_parameters_match_torch():
    """A parameter at an odd address (4-byte accesses), a transposed one, and a gradient laid out differently."""
    storage = torch.randn(1001, device=DEVICE)
    odd = torch.nn.Parameter(storage[1:])  # 4 bytes past a 16-byte boundary
    transposed = torch.nn.Parameter(torch.randn(9, 33, device=DEVICE).t())
    plain = torch.nn.Parameter(torch.randn(50, device=DEVICE))
    params = [odd, transposed, plain]
    ref_params = clone_params(params)
    ours = FusedAdamW(params, lr=1e-2, backend="triton")
    ref = torch.optim.AdamW(ref_params, lr=1e-2)
    for step in range(6):
        for ps, opt in ((params, ours), (ref_params, ref)):
            gen = torch.Generator().manual_seed(step)
            for i, p in enumerate(ps):
                g = torch.randn(p.shape, generator=gen).to(DEVICE)
                p.grad = g.contiguous() if step % 2 else g.t().contiguous().t() if g.dim() == 2 else g
            opt.step()
    assert odd.data_ptr() % 16 != 0
    compare_with_torch(ours, ref, 1e-6)


# ------------------------------------------------------------------------- parameters replaced (p.data = x) ----


def all_state(opt: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    return {(i, k): v.clone() for i, p in enumerate(opt.param_groups[0]["params"])
            for k, v in opt.state.get(p, {}).items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["grow", "shrink-at-the-same-address"])
def test_resized_parameter_is_refused_and_restarts_after_its_state_is_deleted(how, backend):
    """p.data = a tensor of another size, after p was stepped: the step is refused before anything changes (it
    used to walk the new size over the old state slot and change the neighbour's exp_avg); `del opt.state[p]`
    restarts that parameter, the others keep their state, and the result matches torch.optim.AdamW doing the same."""
    params = make_params([(7,), (5,), (3, 4)], seed=14)
    ref_params = clone_params(params)
    ours = FusedAdamW(params, lr=1e-2, amsgrad=True, backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, amsgrad=True)

    def train(steps):
        for step in steps:
            for ps, opt in ((params, ours), (ref_params, ref)):
                opt.zero_grad()
                backward(ps, step)
                opt.step()

    train(range(3))
    grown = torch.randn(70, generator=torch.Generator().manual_seed(15)).to(DEVICE)
    for p in (params[1], ref_params[1]):
        p.data = grown.clone() if how == "grow" else p.data[:3]
    assert (params[1].numel() > 5) == (how == "grow")
    before_state, before_params = all_state(ours), [p.detach().clone() for p in params]
    ours.zero_grad()
    backward(params, 3)
    with pytest.raises(RuntimeError, match=r"parameter 1 of param group 0 has shape .*`del optimizer.state\[p\]"):
        ours.step()
    after = all_state(ours)
    assert after.keys() == before_state.keys()
    for key, value in before_state.items():
        assert torch.equal(after[key], value), f"state {key} changed by a refused step"
    for i, (p, q) in enumerate(zip(params, before_params)):
        assert torch.equal(p, q), f"param {i} changed by a refused step"
    del ours.state[params[1]]
    del ref.state[ref_params[1]]
    train(range(3, 7))
    compare_with_torch(ours, ref, 1e-6)
    assert float(ours.state[params[1]]["step"]) == 4 and float(ours.state[params[0]]["step"]) == 7


@pytest.mark.parametrize("backend", BACKENDS)
def test_resized_parameter_without_a_gradient_restarts_from_its_own_values(backend):
    """Resized in a step where it has no gradient while its bucket is rebuilt (another tensor is unfrozen): after
    `del opt.state[p]` its fp32 master and its L2-SP anchor are its values at the resize, not zeros or old ones."""
    a, b, c = make_params([(7,), (5,), (9,)], dtype=torch.bfloat16, seed=17)
    c.requires_grad_(False)
    opt = FusedAdamW([a, b, c], lr=1e-2, master_weights=True, anchor_decay=0.1, backend=backend)
    for step in range(2):
        opt.zero_grad()
        backward([a, b], step)
        opt.step()
    b.data = torch.randn(12, generator=torch.Generator().manual_seed(18)).to(device=DEVICE, dtype=torch.bfloat16)
    resized = b.detach().clone()
    c.requires_grad_(True)
    opt.zero_grad()
    backward([a, c], 2)  # c is new to the bucket (rebuilt now); b has no gradient
    opt.step()
    opt.zero_grad()
    backward([a, b, c], 3)
    with pytest.raises(RuntimeError, match="has shape"):
        opt.step()
    del opt.state[b]
    opt.step()
    state = opt.state[b]
    assert float(state["step"]) == 1 and float(opt.state[a]["step"]) == 4
    assert torch.equal(state["anchor"], resized)
    assert torch.equal(b.detach(), state["master"].to(torch.bfloat16))
    assert float((b.detach().float() - resized.float()).abs().max()) < 0.05  # one step of lr 1e-2 away


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_dtype_or_layout_carries_the_state_over(backend):
    """p.data = p.data.double() (and back), or the same values in another memory layout: the state moves with the
    parameter (element (i, j) of exp_avg stays with element (i, j) of the parameter, as in torch), cast like
    load_state_dict casts it, and the other parameters keep theirs. torch.optim.AdamW refuses a dtype change, so
    its control is rebuilt through its state dict at each change."""
    params = make_params([(7,), (5,), (3, 4)], seed=16)
    ref_params = clone_params(params)
    ours = FusedAdamW(params, lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=1e-2)
    for step in range(10):
        if step in (3, 6):  # float32 -> float64 -> float32: the slot left behind at step 3 must not be reused at 6
            dtype = torch.float64 if step == 3 else torch.float32
            for p in (params[1], ref_params[1]):
                p.data = p.data.to(dtype)
            saved = ref.state_dict()
            ref = torch.optim.AdamW(ref_params, lr=1e-2)
            ref.load_state_dict(saved)
        if step == 8:  # column-major: same shape and values, another address and strides
            for p in (params[2], ref_params[2]):
                p.data = p.data.t().contiguous().t()
        for ps, opt in ((params, ours), (ref_params, ref)):
            opt.zero_grad()
            backward(ps, step)
            opt.step()
        if step == 4:
            assert ours.state[params[1]]["exp_avg"].dtype == torch.float64
    assert params[2].stride() == (1, 3)
    compare_with_torch(ours, ref, 1e-6)
    assert {float(ours.state[p]["step"]) for p in params} == {10.0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_at_the_same_address_keeps_the_state_with_its_elements(backend):
    """p.data = p.data.t() of a square matrix keeps the address, shape and dtype, and with set_to_none=False the
    gradients keep theirs: only the strides tell the step that element (i, j) is now another one."""
    params = make_params([(4, 4), (5,)], seed=19)
    ref_params = clone_params(params)
    ours = FusedAdamW(params, lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=1e-2)
    for step in range(6):
        if step == 3:
            for p in (params[0], ref_params[0]):
                p.data = p.data.t()
                p.grad = p.grad.t()
        for ps, opt in ((params, ours), (ref_params, ref)):
            opt.zero_grad(set_to_none=False)
            backward(ps, step)
            opt.step()
    assert params[0].stride() == (1, 4)
    compare_with_torch(ours, ref, 1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to move a parameter to")
def test_new_device_carries_the_state_over():
    """p.data = p.data.cuda() after CPU steps: the state follows (states of the same values, step count kept)."""
    params = [torch.nn.Parameter(t) for t in (torch.randn(7), torch.randn(5))]
    ref_params = clone_params(params)
    ours = FusedAdamW(params, lr=1e-2, backend="auto")
    ref = torch.optim.AdamW(ref_params, lr=1e-2)
    for step in range(6):
        if step == 3:
            for p in (params[0], ref_params[0]):
                p.data = p.data.cuda()
            saved = ref.state_dict()
            ref = torch.optim.AdamW(ref_params, lr=1e-2, foreach=False)
            ref.load_state_dict(saved)
        for ps, opt in ((params, ours), (ref_params, ref)):
            opt.zero_grad()
            backward(ps, step)
            opt.step()
    assert ours.state[params[0]]["exp_avg"].device.type == "cuda"
    compare_with_torch(ours, ref, 1e-6)


# ------------------------------------------------------------------------------------------- state dicts ----


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["fused->torch->fused", "torch->fused"])
def test_state_dict_moves_between_fused_and_torch(direction, backend):
    params = make_params(seed=4)
    ours_first = direction.startswith("fused")
    first_params, second_params = params, clone_params(params)
    make_first = (lambda ps: FusedAdamW(ps, lr=1e-2, amsgrad=True, backend=backend)) if ours_first else \
        (lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True))
    make_second = (lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True)) if ours_first else \
        (lambda ps: FusedAdamW(ps, lr=1e-2, amsgrad=True, backend=backend))
    first = make_first(first_params)
    control = torch.optim.AdamW(control_params := clone_params(params), lr=1e-2, amsgrad=True)

    def train(ps, opt, steps):
        for step in steps:
            opt.zero_grad()
            backward(ps, step, skip=lambda i, s: i == 0)  # param 0 never has a gradient: no state entry
            opt.step()

    train(first_params, first, range(5))
    train(control_params, control, range(5))
    saved = copy.deepcopy(first.state_dict())
    assert saved["state"].keys() == control.state_dict()["state"].keys()
    for key, entry in saved["state"].items():
        assert set(entry) == set(control.state_dict()["state"][key]), "state keys differ from torch.optim.AdamW's"
        assert entry["step"].dtype == torch.float32 and entry["step"].dim() == 0
    with torch.no_grad():
        for p, q in zip(second_params, first_params):
            p.copy_(q)
    second = make_second(second_params)
    second.load_state_dict(saved)
    train(second_params, second, range(5, 10))
    train(control_params, control, range(5, 10))
    compare_with_torch(second, control, 1e-6)
    if ours_first:  # and back again
        third_params = clone_params(second_params)
        third = FusedAdamW(third_params, lr=1e-2, amsgrad=True, backend=backend)
        third.load_state_dict(copy.deepcopy(second.state_dict()))
        train(third_params, third, range(10, 13))
        train(control_params, control, range(10, 13))
        compare_with_torch(third, control, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_correction_at_large_step_counts_matches_torch(backend):
    """beta ** step by squaring in the prologue, for steps with many bits (loaded from a torch checkpoint)."""
    params = make_params(seed=13)
    ref_params = clone_params(params)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, betas=(0.9, 0.9999))
    backward(ref_params, 0)
    ref.step()
    for i, q in enumerate(ref_params):
        ref.state[q]["step"].fill_([1, 2, 999, 70001][i])
    ours = FusedAdamW(params, lr=1e-2, backend=backend)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    with torch.no_grad():
        for p, q in zip(params, ref_params):
            p.copy_(q)
    for step in range(1, 4):
        for ps, opt in ((params, ours), (ref_params, ref)):
            opt.zero_grad()
            backward(ps, step)
            opt.step()
    compare_with_torch(ours, ref, 1e-6)


# ----------------------------------------------------------------------------- fine-tuning extensions ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_anchor_decay_is_l2sp_toward_the_values_at_build_time(backend):
    params = make_params(seed=5)
    start = [p.detach().clone() for p in params]
    ref_params = clone_params(params)
    lr, decay = 1e-2, 0.5
    ours = FusedAdamW([{"params": params, "anchor_decay": decay}], lr=lr, weight_decay=0.01, backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=lr, weight_decay=0.01)
    with torch.no_grad():  # moved after the optimizer was built: the anchor must stay at the values at build time
        for p, q in zip(params, ref_params):
            p.add_(0.25)
            q.add_(0.25)
    for step in range(30):
        for ps, opt in ((params, ours), (ref_params, ref)):
            opt.zero_grad()
            backward(ps, step)
        prev = [q.detach().clone() for q in ref_params]
        ours.step()
        ref.step()
        with torch.no_grad():  # L2-SP by hand: p -= lr * anchor_decay * (p_prev - p0), after the AdamW update
            for q, q_prev, p0 in zip(ref_params, prev, start):
                q.sub_(lr * decay * (q_prev - p0))
    compare_with_torch(ours, ref, 1e-6)
    for p, p0 in zip(params, start):
        assert torch.equal(ours.state[p]["anchor"], p0)
    # The anchors ride along in state dicts, also through torch.optim.AdamW, which ignores them.
    via_torch = torch.optim.AdamW(clone_params(params), lr=lr)
    via_torch.load_state_dict(copy.deepcopy(ours.state_dict()))
    back = FusedAdamW(clone_params(params), lr=lr, backend=backend)
    back.load_state_dict(copy.deepcopy(via_torch.state_dict()))
    back_params = back.param_groups[0]["params"]
    backward(back_params, 99)
    back.step()
    for p, p0 in zip(back_params, start):
        assert torch.equal(back.state[p]["anchor"], p0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_norm", [0.5, 1e4], ids=["clipping", "below-threshold"])
@pytest.mark.parametrize("scope", ["one-group", "every-group"])
def test_max_grad_norm_matches_clip_grad_norm_then_adamw(scope, max_norm, backend):
    """One global norm over the parameters of every group that sets max_grad_norm, as one clip_grad_norm_ call over
    them (the training loop sets it on each of its groups); a group without it is not clipped."""
    params = make_params(seed=6)
    other = make_params([(5, 3)], seed=7)
    ref_params, ref_other = clone_params(params), clone_params(other)
    other_clip = {"max_grad_norm": max_norm} if scope == "every-group" else {}
    ours = FusedAdamW([{"params": params, "max_grad_norm": max_norm},
                       {"params": other, "lr": 3e-2, "weight_decay": 0.0, **other_clip}], lr=1e-2, backend=backend)
    ref = torch.optim.AdamW([{"params": ref_params}, {"params": ref_other, "lr": 3e-2, "weight_decay": 0.0}], lr=1e-2)
    clipped = ref_params + (ref_other if other_clip else [])
    for step in range(15):
        ours.zero_grad()
        backward(params + other, step)
        grads_before = [p.grad.clone() for p in params]
        ours.step()
        for p, g in zip(params, grads_before):
            assert torch.equal(p.grad, g), "the fused step must not modify the gradients"
        ref.zero_grad()
        backward(ref_params + ref_other, step)
        norm = torch.nn.utils.clip_grad_norm_(clipped, max_norm)
        ref.step()
        assert_rel_close(ours.last_grad_norm(0), norm, 1e-6, "reported grad norm")
        if other_clip:
            assert_rel_close(ours.last_grad_norm(1), norm, 1e-6, "reported grad norm of group 1")
        else:
            assert ours.last_grad_norm(1) is None
    compare_with_torch(ours, ref, 1e-6)
    if max_norm < 1:
        assert float(norm) > max_norm, "the gradients never exceeded max_norm: clipping was not exercised"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_master_weights_follow_fp32_adamw_and_round_to_nearest_even(dtype, backend):
    """With master weights the update is fp32 AdamW on the masters (checked against torch.optim.AdamW on fp32 copies
    fed the same gradients), and each parameter is its master rounded to nearest even."""
    params = make_params(dtype=dtype, seed=8)
    masters_ref = [torch.nn.Parameter(p.detach().float()) for p in params]
    ours = FusedAdamW(params, lr=1e-2, master_weights=True, max_grad_norm=1.0, backend=backend)
    ref = torch.optim.AdamW(masters_ref, lr=1e-2)
    for step in range(15):
        ours.zero_grad()
        backward(params, step)
        for q, p in zip(masters_ref, params):
            q.grad = p.grad.float()
        torch.nn.utils.clip_grad_norm_(masters_ref, 1.0)
        ours.step()
        ref.step()
    for p, q in zip(params, masters_ref):
        state = ours.state[p]
        assert state["master"].dtype == state["exp_avg"].dtype == torch.float32
        assert_rel_close(state["master"], q, 1e-6, "master weights")
        # exp_avg_sq scales with 1 / norm**2 of the clipping: on these bf16-valued gradients clip_grad_norm_'s fp32
        # norm is 4.5e-7 off the exact (fp64) norm, the kernel's fp64-accumulated one 2e-8, hence 2e-6 here.
        assert_rel_close(state["exp_avg_sq"], ref.state[q]["exp_avg_sq"], 2e-6, "exp_avg_sq")
        assert torch.equal(p, state["master"].to(dtype)), "parameter != master rounded to nearest even"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_rounding_of_master_weights_is_nearest_even_on_edge_values(backend):
    """Ties to even, values rounding up or overflowing to inf, subnormals, inf and NaN: the kernel's integer
    rounding must agree bit for bit with Tensor.to(torch.bfloat16) (a truncating store would not)."""
    one = torch.tensor(1.0).view(torch.int32)
    ties = (torch.arange(8, dtype=torch.int32) * 0x10000 + one + 0x8000).view(torch.float32)  # exact halfway
    edge = torch.tensor([1.0 + 2**-8 + 2**-9, 3.3895314e38, -3.3895314e38, 1e-40, -1e-40, float("inf"),
                         float("-inf"), float("nan"), 0.0, -0.0, 1.00390625, 2.0**-130])
    crafted = torch.cat([ties, edge, torch.randn(4000, generator=torch.Generator().manual_seed(9)) * 100]).to(DEVICE)
    p = torch.nn.Parameter(torch.zeros(crafted.numel(), dtype=torch.bfloat16, device=DEVICE))
    opt = FusedAdamW([p], lr=0.0, weight_decay=0.0, master_weights=True, backend=backend)
    p.grad = torch.ones_like(p)
    opt.step()  # lr = 0: the master does not move, the parameter is re-rounded from it
    with torch.no_grad():
        opt.state[p]["master"].copy_(crafted)
        p.copy_(torch.full_like(p, 7.0))
    opt.step()
    expected = crafted.to(torch.bfloat16)
    nan = expected.isnan()  # NaN payloads differ between PyTorch's own paths (0x7FC0 scalar, 0xFFFF vectorised)
    assert torch.equal(p.detach().isnan(), nan)
    got_bits, expected_bits = p.detach()[~nan].view(torch.int16), expected[~nan].view(torch.int16)
    assert torch.equal(got_bits, expected_bits), (got_bits != expected_bits).nonzero()[:5]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_without_master_weights_matches_the_reference(dtype):
    """bf16/fp16 states, fp32 arithmetic, one rounding per store: the Triton kernel against the reference."""
    params = make_params(dtype=dtype, seed=10)
    ref_params = clone_params(params)
    ours = FusedAdamW(params, lr=1e-2, amsgrad=True, backend="triton")
    ref = FusedAdamW(ref_params, lr=1e-2, amsgrad=True, backend="torch")
    for step in range(10):
        for ps, opt in ((params, ours), (ref_params, ref)):
            opt.zero_grad()
            backward(ps, step)
            opt.step()
    for p, q in zip(params, ref_params):
        assert ours.state[p]["exp_avg"].dtype == dtype
        # The only differences are fp32 rounding ties between two orders of operations: at most 1 ulp, rarely.
        ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
        torch.testing.assert_close(p, q, rtol=ulp, atol=1e-6)
        mismatch = (p != q).float().mean().item()
        assert mismatch < 0.01, f"{mismatch:.1%} of the parameters differ from the reference"


# --------------------------------------------------------------------------------- launches, syncs, API ----


def test_launches_per_group_do_not_grow_with_the_number_of_tensors(monkeypatch):
    launches: list[str] = []
    real = adamw_kernels._launch
    monkeypatch.setattr(adamw_kernels, "_launch",
                        lambda kernel, grid, *a, **k: (launches.append(kernel.fn.__name__), real(kernel, grid, *a, **k)))
    counts = {}
    for n_tensors in (2, 24):
        for clip in (None, 1.0):
            params = make_params([(5 + i,) for i in range(n_tensors)], seed=11)
            opt = FusedAdamW(params, max_grad_norm=clip, backend="triton")
            for step in range(2):
                opt.zero_grad()
                backward(params, step)
                launches.clear()
                opt.step()
            counts[(n_tensors, clip)] = list(launches)
    assert counts[(2, None)] == counts[(24, None)] == ["_adamw_prologue_kernel", "_adamw_update_kernel"]
    assert counts[(2, 1.0)] == counts[(24, 1.0)] == ["_grad_sumsq_kernel", "_adamw_prologue_kernel",
                                                       "_adamw_update_kernel"]


def test_step_keeps_the_step_count_on_the_device(monkeypatch):
    """No .item() / .tolist() / .cpu() in a step (each would synchronise a GPU), tensor lr and clipping included."""
    params = make_params(seed=12)
    opt = FusedAdamW([{"params": params[:2], "max_grad_norm": 0.1, "anchor_decay": 0.1}, {"params": params[2:]}],
                     lr=torch.tensor(1e-2, device=DEVICE), backend="triton")
    backward(params, 0)
    opt.step()

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside FusedAdamW.step()")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "cpu", "__bool__", "__float__"):
            m.setattr(torch.Tensor, name, forbidden)
        for step in range(1, 4):
            opt.step()
            norm = opt.last_grad_norm()
    assert opt.state[params[0]]["step"].device.type == DEVICE and float(opt.state[params[0]]["step"]) == 4
    assert norm.shape == () and norm.device.type == DEVICE


def test_backend_choice(caplog):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="unknown backend"):
        FusedAdamW([p], backend="cuda")
    if DEVICE == "cpu":
        with caplog.at_level("INFO", logger="automl_ft.kernels"):
            opt = FusedAdamW([p], backend="auto")
        assert opt._backend_for(p.device) == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU without Triton's interpreter")
def test_triton_backend_without_interpreter_raises():
    code = ("import torch; from automl_ft.kernels import FusedAdamW, KernelUnavailableError\n"
            "try:\n FusedAdamW([torch.nn.Parameter(torch.ones(2))], backend='triton')\n"
            "except KernelUnavailableError as e: print('raised', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert "raised" in out.stdout and "TRITON_INTERPRET" in out.stdout, out.stderr
    assert issubclass(KernelUnavailableError, Exception)


def test_invalid_hyperparameters_are_rejected():
    p = torch.nn.Parameter(torch.randn(3))
    for kwargs in ({"lr": -1.0}, {"betas": (1.0, 0.9)}, {"eps": -1.0}, {"weight_decay": -0.1},
                   {"anchor_decay": -1.0}, {"max_grad_norm": 0.0}):
        with pytest.raises(ValueError):
            FusedAdamW([p], **kwargs)


def test_grad_norm_reference_matches_clip_grad_norm():
    grads = [torch.randn(s) for s in SHAPES]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    assert_rel_close(adamw_grad_norm_reference(grads), torch.nn.utils.clip_grad_norm_(params, 1e9), 1e-6, "norm")
