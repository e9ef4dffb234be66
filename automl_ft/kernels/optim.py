"""``FusedAdamW``: ``torch.optim.AdamW``'s update in a constant number of kernel launches per parameter group, with
the fine-tuning extensions L2-SP (``anchor_decay``), global-norm clipping folded into the update (``max_grad_norm``)
and fp32 master weights for bf16/fp16 parameters.

State layout. For every (param group, device, parameter dtype) the optimizer keeps one *bucket*: flat buffers for
``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``, anchors, fp32 masters when used), one fp32 step counter per
tensor, all on the parameters' device. ``self.state[p]`` holds views of them under PyTorch's keys (``step``,
``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; plus ``anchor`` / ``master``), so ``state_dict()`` moves to and
from ``torch.optim.AdamW`` unchanged. As in PyTorch, a tensor's state appears once it has had a gradient, and a
tensor without a gradient in a step is skipped: its step count and states do not change. Parameters and gradients
are not copied or moved (see ``adamw.py`` for why and how the kernels reach them).

Parameters replaced in place (``p.data = other``, which ``module.to()``, ``.double()``, ``.half()`` do). A tensor's
state slot is cut for its shape, strides, dtype and device, so the step after such a change re-plans:

* Another dtype, device or memory layout with the same shape: the state moves with the parameter (re-laid, cast and
  moved as ``load_state_dict`` casts it; the step count is kept), and every other parameter keeps its state.
  ``torch.optim.AdamW`` refuses a dtype or device change at its next step; moving a model and going on training is
  what the change asks for, and the values of the moments keep their meaning.
* Another shape (``p.data = larger_tensor``, ``p.data = p.data[:n]``): ``step()`` raises ``RuntimeError`` before
  anything is updated, as ``torch.optim.AdamW`` does, because moments of other elements do not describe the new
  ones, and zeroing them silently would change the training. ``del optimizer.state[p]`` restarts that parameter
  (zero moments, step 0, and with ``anchor_decay`` its current values as the anchor if the old one no longer fits)
  and keeps every other parameter's state. Before this check, the step walked the new size over the old slot and
  changed a neighbour's ``exp_avg``.

Memory per parameter: 8 bytes of states in fp32 (+4 with amsgrad), +4 for an fp32 master copy of a bf16/fp16
parameter (states then fp32 too), + one copy in the parameter's dtype for the L2-SP anchor (2 bytes for bf16,
4 for fp32). Buckets are allocated at the first step, for the group's tensors that require a gradient.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch

from ._backend import BACKENDS, resolve_backend
from .reference import adamw_clip_coef_reference, adamw_grad_norm_reference, adamw_step_reference

# Each tensor's segment of the flat state buffers starts at a multiple of 64 elements (256 bytes in fp32): the
# kernels' vector accesses need 16-byte alignment; the padding costs < 64 elements per tensor.
_STATE_ALIGN = 64
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SPARSE_MESSAGE = ("FusedAdamW does not support sparse gradients (a parameter of shape {shape} has one); "
                   "use torch.optim.SparseAdam for sparse embeddings")


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill ``numel`` consecutive slots in some dimension order."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda s: s[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


class _Bucket:
    """The AdamW state of one group's tensors of one device and dtype: flat buffers, per-tensor views, scratch."""

    def __init__(self, params: list[torch.Tensor], *, amsgrad: bool, master: bool, anchored: bool) -> None:
        self.params = params
        self.index = {p: i for i, p in enumerate(params)}
        self.device, self.dtype = params[0].device, params[0].dtype
        self.amsgrad, self.master, self.anchored = amsgrad, master, anchored
        self.state_dtype = torch.float32 if master else self.dtype
        self.offsets: list[int] = []
        total = 0
        for p in params:
            self.offsets.append(total)
            total += -(-p.numel() // _STATE_ALIGN) * _STATE_ALIGN
        dev = self.device

        def flat(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(total, dtype=dtype, device=dev)

        self.exp_avg = flat(self.state_dtype)
        self.exp_avg_sq = flat(self.state_dtype)
        self.max_exp_avg_sq = flat(self.state_dtype) if amsgrad else None
        self.anchor = flat(self.dtype) if anchored else None
        self.master_flat = flat(torch.float32) if master else None
        self.steps = torch.zeros(len(params), dtype=torch.float32, device=dev)
        # Kernel scratch: per-tensor (step_size, sqrt(bias_correction2)); [grad norm, clip coef, decay, anchor coef].
        self.coefs = torch.zeros(2 * len(params), dtype=torch.float32, device=dev)
        self.scalars = torch.zeros(4, dtype=torch.float32, device=dev)
        # The kernels' fixed base pointer (its own small allocation, so its address never changes).
        self.base = torch.zeros(16, dtype=self.dtype, device=dev)
        self.views: list[dict[str, torch.Tensor]] = []
        for i, p in enumerate(params):
            off = self.offsets[i]

            def view(buf: torch.Tensor, off: int = off, p: torch.Tensor = p) -> torch.Tensor:
                return buf.as_strided(p.size(), p.stride(), off)

            d = {"step": self.steps[i], "exp_avg": view(self.exp_avg), "exp_avg_sq": view(self.exp_avg_sq)}
            if amsgrad:
                d["max_exp_avg_sq"] = view(self.max_exp_avg_sq)
            if anchored:
                d["anchor"] = view(self.anchor)
            if master:
                d["master"] = view(self.master_flat)
            self.views.append(d)
        self.stepped = [False] * len(params)
        # Each slot's state is laid out for the parameter's shape and strides when the bucket was built.
        self.layouts = [(p.shape, p.stride()) for p in params]

    def matches(self, amsgrad: bool, master: bool, anchored: bool) -> bool:
        return (self.amsgrad, self.master, self.anchored) == (amsgrad, master, anchored)

    def holds(self, p: torch.Tensor, saved: dict[str, Any] | None) -> bool:
        """Whether this bucket's slot for ``p`` is still its state: ``p`` is in it with the layout the slot was cut
        for (``p.data = ...`` may have changed it) and ``optimizer.state[p]`` is that slot's views (not deleted, not
        a state that another bucket or a loaded state dict holds)."""
        slot = self.index.get(p)
        if slot is None or self.layouts[slot] != (p.shape, p.stride()):
            return False
        return saved is self.views[slot] if self.stepped[slot] else not saved


@dataclass
class _BucketPlan:
    bucket: _Bucket
    positions: list[int]  # indices into group["params"] of the tensors with a gradient
    slots: list[int]  # their slots in the bucket
    backend: str
    tiles: torch.Tensor | None = None
    active: torch.Tensor | None = None
    unit: int = 1
    keepalive: list[torch.Tensor] | None = None  # re-laid gradients (not cacheable)
    lists: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # torch backend: per-tensor views


@dataclass
class _Plan:
    """One group's step, valid while the data pointers of its parameters and gradients stay the same."""

    key: tuple | None
    buckets: list[_BucketPlan]
    params: list[torch.Tensor]  # group["params"], which positions index


class FusedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction) in fused Triton kernels, interchangeable with
    ``torch.optim.AdamW``.

    Args:
        params: parameters or param groups. Per group, besides the usual ``lr``, ``betas``, ``eps``,
            ``weight_decay``, ``amsgrad``, ``maximize``:
            ``anchor_decay`` (L2-SP): ``p -= lr * anchor_decay * (p - p0)`` each step, with ``p0`` the values the
            parameters had when the optimizer was built (kept in the parameters' dtype; pass a value > 0 at
            construction, anchors are not captured later);
            ``max_grad_norm``: global-norm clipping folded into the update, as ``clip_grad_norm_`` followed by
            AdamW would do it. The norm is the L2 norm over the gradients of *every* group that sets
            ``max_grad_norm`` (one norm, like one ``clip_grad_norm_`` call over all trainable tensors, which is
            what training code does when it sets it on each of its groups; with a single clipping group it is
            that group's norm); each group scales by ``min(1, its max_grad_norm / (norm + 1e-6))``. The
            gradients themselves are not modified; ``None`` disables it. ``last_grad_norm()`` reports the norm.
        master_weights: keep fp32 master weights and fp32 states for bf16/fp16 parameters; the parameters get the
            master rounded to nearest even after each step. Ignored for fp32 parameters.
        backend: ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``), ``"torch"`` (the PyTorch reference,
            :func:`adamw_step_reference`) or ``"auto"`` (Triton on CUDA, the reference elsewhere, logged).

    Raises:
        ValueError: an invalid hyperparameter or backend name, a complex / non-float / non-dense parameter.
        KernelUnavailableError: ``backend="triton"`` where Triton cannot run.
        RuntimeError: at ``step()``, a sparse gradient, or a parameter whose shape changed after it was stepped
            (see the module notes: ``del optimizer.state[p]`` restarts it; a new dtype or device is carried over).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        master_weights: bool = False,
        anchor_decay: float = 0.0,
        max_grad_norm: float | None = None,
        backend: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"FusedAdamW: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self._backend = backend
        self._backends: dict[str, str] = {}
        self._anchors: dict[torch.Tensor, torch.Tensor] = {}
        self._reset_caches()
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
                    "maximize": maximize, "anchor_decay": anchor_decay, "max_grad_norm": max_grad_norm,
                    "master_weights": master_weights}
        super().__init__(params, defaults)

    # ------------------------------------------------------------------------------------------------ set-up ----

    def _reset_caches(self) -> None:
        self._buckets: dict[tuple[int, torch.device, torch.dtype], _Bucket] = {}
        self._plans: dict[int, _Plan] = {}
        self._grad_norms: dict[int, torch.Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate_group(group, len(self.param_groups) - 1)
        for p in group["params"]:
            self._backend_for(p.device)
            if group["anchor_decay"] > 0 and p.requires_grad and p not in self._anchors:
                self._anchors[p] = p.detach().clone()

    def _backend_for(self, device: torch.device) -> str:
        chosen = self._backends.get(device.type)
        if chosen is None:
            chosen = self._backends[device.type] = resolve_backend(self._backend, device.type, "FusedAdamW")
        return chosen

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_backend=self._backend, _anchors=self._anchors)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_backend", "auto")
        self.__dict__.setdefault("_backends", {})
        self.__dict__.setdefault("_anchors", {})
        master_default = self.defaults.get("master_weights", False)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("anchor_decay", 0.0)
            group.setdefault("max_grad_norm", None)
            group.setdefault("master_weights", master_default)
        self._reset_caches()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``FusedAdamW`` or ``torch.optim.AdamW`` state dict.

        PyTorch's loader casts every floating state to the parameter's dtype, which would round fp32 master
        states to bf16; the tensors are re-imported from ``state_dict`` as saved, into fresh flat buffers at the
        next step. A saved ``master`` that does not round to the current parameter (e.g. it went through
        ``torch.optim.AdamW``, which does not update it) is replaced by the parameter's value.
        """
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        super().load_state_dict(state_dict)
        id_to_param = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                               chain.from_iterable(g["params"] for g in self.param_groups)))
        state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for key, value in saved_state.items():
            p = id_to_param.get(key)
            state[p if p is not None else key] = dict(value)
        self.state = state
        self._reset_caches()

    def last_grad_norm(self, group: int = 0) -> torch.Tensor | None:
        """The global gradient norm (before clipping) that param group ``group`` was clipped with at the last step,
        as a 0-dim fp32 tensor on its device (no synchronisation until you read it); None if it does not clip."""
        norm = self._grad_norms.get(group)
        return None if norm is None else norm.clone()

    # ------------------------------------------------------------------------------------------------- step ----

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AdamW step over every param group; parameters without a gradient are skipped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for gi, group in enumerate(self.param_groups):
            try:
                key = _pointer_key(group)
            except RuntimeError:  # a sparse gradient has no data pointer: the planner raises the clear error
                key = None
            plan = self._plans.get(gi)
            if plan is None or key is None or plan.key != key:
                plan = self._make_plan(gi, group, key)
                self._plans[gi] = plan
            if plan.buckets:
                work.append((gi, group, plan))
            if group["max_grad_norm"] is None or not plan.buckets:
                self._grad_norms.pop(gi, None)
        shared = self._global_grad_norm([plan for _, group, plan in work if group["max_grad_norm"] is not None])
        for gi, group, plan in work:
            self._run(gi, group, plan, shared if group["max_grad_norm"] is not None else None)
        return loss

    def _global_grad_norm(self, plans: list[_Plan]) -> torch.Tensor | None:
        """The clipping groups' shared norm: Triton, per-tile partial sums of squares (fp64) that every prologue
        reduces, one launch per bucket; torch, the norm itself. None when no group clips."""
        buckets = [bp for plan in plans for bp in plan.buckets]
        if not buckets:
            return None
        if len({bp.bucket.device for bp in buckets}) > 1:
            raise ValueError("FusedAdamW: the param groups that clip gradients (max_grad_norm) have parameters on "
                             "several devices; one global norm needs them on one device")
        device = buckets[0].bucket.device
        if buckets[0].backend == "torch":
            grads = [plan_grads for plan in plans for plan_grads in _plan_grads(plan)]
            return adamw_grad_norm_reference([g for bucket_grads in grads for g in bucket_grads])
        from . import adamw

        total = sum(bp.tiles.shape[0] for bp in buckets)
        # One zero partial when every tensor is empty: the prologues then read a norm of 0.
        partials = (torch.empty(total, dtype=torch.float64, device=device) if total
                    else torch.zeros(1, dtype=torch.float64, device=device))
        with _device_context(device):
            start = 0
            for bp in buckets:
                n = bp.tiles.shape[0]
                adamw.grad_sumsq(bp.bucket.base, bp.tiles, bp.unit, partials[start:start + n])
                start += n
        return partials

    def _make_plan(self, gi: int, group: dict[str, Any], key: tuple | None) -> _Plan:
        params = group["params"]
        by_kind: dict[tuple[torch.device, torch.dtype], list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for pos, p in enumerate(params):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(_SPARSE_MESSAGE.format(shape=tuple(p.shape)))
            by_kind.setdefault((p.device, p.dtype), []).append((pos, p, g))
        for items in by_kind.values():  # before anything is rebuilt or stepped: a refused step changes nothing
            for pos, p, _ in items:
                _check_state_fits(self.state.get(p), p, gi, pos)
        amsgrad, anchored = bool(group["amsgrad"]), self._group_anchored(group)
        cacheable = key is not None
        plans: list[_BucketPlan] = []
        live = {(p.device, p.dtype) for p in params}
        for stale in [k for k in self._buckets if k[0] == gi and (k[1], k[2]) not in live]:
            del self._buckets[stale]  # every tensor of it moved to another dtype or device (e.g. model.double())
        for (device, dtype), items in by_kind.items():
            master = bool(group["master_weights"]) and dtype in _LOW_PRECISION
            bucket = self._buckets.get((gi, device, dtype))
            if (bucket is None or not bucket.matches(amsgrad, master, anchored)
                    or not all(bucket.holds(p, self.state.get(p)) for _, p, _ in items)):
                bucket = self._build_bucket(gi, group, device, dtype, amsgrad=amsgrad, master=master,
                                            anchored=anchored)
            slots = [bucket.index[p] for _, p, _ in items]
            for (_, p, _), slot in zip(items, slots):
                if not bucket.stepped[slot]:
                    bucket.stepped[slot] = True
                    self.state[p] = bucket.views[slot]
            bp = _BucketPlan(bucket, [pos for pos, _, _ in items], slots, self._backend_for(device))
            if bp.backend == "triton":
                from . import adamw

                grads = []
                for _, p, g in items:
                    if g.stride() != p.stride():  # rare: the kernel walks both in the same memory order
                        g = torch.empty_like(p).copy_(g)
                        cacheable = False
                    grads.append(g)
                bp.keepalive = grads
                _, chunk, _ = adamw.adamw_launch_settings(device.type)
                bp.tiles, bp.active, bp.unit = adamw.build_tiles(bucket.base, [p for _, p, _ in items], grads,
                                                                 slots, bucket.offsets, _STATE_ALIGN, chunk)
            else:
                views = [bucket.views[s] for s in slots]
                bp.lists = {k: [v[k] for v in views] for k in views[0]}
                bp.lists["params"] = [p for _, p, _ in items]
                if len(slots) < len(bucket.params):
                    bp.active = torch.tensor(slots, dtype=torch.int64, device=device)
            plans.append(bp)
        plan = _Plan(key if cacheable else None, plans, params)
        if cacheable:
            for bp in plans:
                bp.keepalive = None
        return plan

    def _group_anchored(self, group: dict[str, Any]) -> bool:
        return group["anchor_decay"] > 0 or any(p in self._anchors for p in group["params"])

    def _build_bucket(self, gi: int, group: dict[str, Any], device: torch.device, dtype: torch.dtype, *,
                      amsgrad: bool, master: bool, anchored: bool) -> _Bucket:
        """(Re)allocate a bucket for the group's tensors of ``device``/``dtype`` that need a state, importing the
        values of any existing state (earlier buckets, a loaded state dict)."""
        params = [p for p in group["params"] if p.device == device and p.dtype == dtype
                  and (p.requires_grad or p.grad is not None)]
        for p in params:
            if not p.is_floating_point() or p.is_complex():
                raise ValueError(f"FusedAdamW: parameters must be real floating point, got {p.dtype} "
                                 f"(shape {tuple(p.shape)}); use torch.optim.AdamW for complex parameters")
            if not _is_dense(p):
                raise ValueError(f"FusedAdamW: a parameter of shape {tuple(p.shape)} and strides {p.stride()} is "
                                 f"not dense (a strided slice); make it contiguous before building the optimizer")
        bucket = _Bucket(params, amsgrad=amsgrad, master=master, anchored=anchored)
        for slot, p in enumerate(params):
            views, saved = bucket.views[slot], self.state.get(p)
            if saved and _state_mismatch(saved, p) is not None:
                # Resized, and without a gradient in this step: its old state stays in optimizer.state, so that the
                # step that gives it a gradient refuses (_check_state_fits) unless the state was deleted by then;
                # its slot starts afresh meanwhile.
                saved = None
            if saved:
                step = saved["step"]
                views["step"].copy_(step if torch.is_tensor(step) else torch.tensor(float(step)))
                views["exp_avg"].copy_(saved["exp_avg"])
                views["exp_avg_sq"].copy_(saved["exp_avg_sq"])
                if amsgrad and "max_exp_avg_sq" in saved:
                    views["max_exp_avg_sq"].copy_(saved["max_exp_avg_sq"])
            if master:
                saved_master = saved.get("master") if saved else None
                if saved_master is not None and torch.equal(saved_master.to(device=device, dtype=dtype), p):
                    views["master"].copy_(saved_master)
                else:
                    views["master"].copy_(p)
            if anchored:
                anchor = saved.get("anchor") if saved else None
                if anchor is None:
                    anchor = self._anchors.get(p)
                    if anchor is not None and anchor.shape != p.shape:
                        anchor = None  # resized before its first step, or since (its state deleted): starts afresh
                if anchor is None:
                    if saved:
                        raise ValueError(
                            f"FusedAdamW: param group {gi} has anchor_decay={group['anchor_decay']} but a parameter "
                            f"of shape {tuple(p.shape)} was trained without an anchor; set anchor_decay > 0 when "
                            f"building the optimizer so the starting values are kept")
                    anchor = p  # never stepped: its current values are where this optimizer starts from
                views["anchor"].copy_(anchor)
                self._anchors[p] = views["anchor"]
            if saved:
                bucket.stepped[slot] = True
                self.state[p] = views
        self._buckets[(gi, device, dtype)] = bucket
        return bucket

    def _run(self, gi: int, group: dict[str, Any], plan: _Plan, shared: torch.Tensor | None) -> None:
        """Step one group; ``shared`` is what :meth:`_global_grad_norm` returned when the group clips."""
        lr = group["lr"]
        beta1, beta2 = (float(b) for b in group["betas"])
        max_norm = group["max_grad_norm"]
        anchor_decay = float(group["anchor_decay"])
        triton_plans = [bp for bp in plan.buckets if bp.backend == "triton"]
        torch_plans = [bp for bp in plan.buckets if bp.backend == "torch"]
        if triton_plans:
            from . import adamw

            with _device_context(triton_plans[0].bucket.device):
                for bp in triton_plans:
                    b = bp.bucket
                    adamw.adamw_step(
                        b.base, bp.tiles, bp.active, bp.unit, steps=b.steps, coefs=b.coefs, scalars=b.scalars,
                        exp_avg=b.exp_avg, exp_avg_sq=b.exp_avg_sq,
                        max_exp_avg_sq=b.max_exp_avg_sq if group["amsgrad"] else None,
                        anchor=b.anchor if anchor_decay > 0 else None, master=b.master_flat, lr=lr, beta1=beta1,
                        beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                        anchor_decay=anchor_decay, maximize=group["maximize"], partials=shared,
                        max_grad_norm=max_norm)
            if max_norm is not None:
                self._grad_norms[gi] = triton_plans[0].bucket.scalars[0]
        if torch_plans:
            coef = None
            if max_norm is not None:
                coef = adamw_clip_coef_reference(shared, max_norm)
                self._grad_norms[gi] = shared
            for bp, bgrads in zip(torch_plans, _plan_grads(plan, "torch")):
                lists, b = bp.lists, bp.bucket
                lr_b = lr.to(b.device) if isinstance(lr, torch.Tensor) else lr
                if bp.active is None:  # every tensor of the bucket has a gradient
                    b.steps.add_(1.0)
                else:
                    b.steps.index_add_(0, bp.active, torch.ones_like(bp.active, dtype=torch.float32))
                adamw_step_reference(
                    lists["params"], bgrads, lists["exp_avg"], lists["exp_avg_sq"],
                    lists.get("max_exp_avg_sq", []) if group["amsgrad"] else [], lists["step"], lr=lr_b,
                    beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    amsgrad=group["amsgrad"], maximize=group["maximize"], clip_coef=coef,
                    anchors=lists.get("anchor") if anchor_decay > 0 else None, anchor_decay=anchor_decay,
                    masters=lists.get("master"), count_step=False)


_data_ptr = torch.Tensor.data_ptr
_shape = operator.attrgetter("shape")
_stride = torch.Tensor.stride


def _plan_grads(plan: _Plan, backend: str | None = None) -> list[list[torch.Tensor]]:
    """The current gradients of each bucket plan (of one backend), in the plan's order."""
    params = plan.params
    return [[params[pos].grad for pos in bp.positions] for bp in plan.buckets
            if backend is None or bp.backend == backend]


def _pointer_key(group: dict[str, Any]) -> tuple:
    """Where every parameter and gradient of the group lives and the parameters' shapes, plus the options that
    change the kernels.

    Shapes and strides are part of it because ``p.data = p.data[:n]`` or ``p.data = p.data.t()`` keeps the address:
    a plan built for the old size would walk it over the new tensor and its state slot, and one built for the old
    layout would pair state elements with other elements of the parameter than ``state_dict()`` says.

    This runs every step, so it is written for speed: about 150 us for 448 tensors on this 2-core EPYC (72 us for
    the pointers alone, +37 for the shapes, +42 for the strides; best of 40 runs under load; a map over the C
    method instead of a comprehension saves 12 %), while moving the 1.1 GB of their 40 M parameters' AdamW traffic
    takes about 0.37 ms at an H100's ~3 TB/s (an estimate: not measured yet), so the host keeps ahead.
    """
    params = group["params"]
    grads = [p.grad for p in params]
    try:
        grad_ptrs = tuple(map(_data_ptr, grads))
    except TypeError:  # some parameters have no gradient
        grad_ptrs = tuple([0 if g is None else g.data_ptr() for g in grads])
    return (tuple(map(_data_ptr, params)), grad_ptrs, tuple(map(_shape, params)), tuple(map(_stride, params)),
            bool(group["amsgrad"]), bool(group["master_weights"]), group["anchor_decay"] > 0)


_STATE_TENSORS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master", "anchor")


def _state_mismatch(saved: dict[str, Any], p: torch.Tensor) -> tuple[str, torch.Size] | None:
    """The first state tensor of ``saved`` whose shape is not ``p``'s, as (key, shape), or None."""
    for key in _STATE_TENSORS:
        t = saved.get(key)
        if isinstance(t, torch.Tensor) and t.shape != p.shape:
            return key, t.shape
    return None


def _check_state_fits(saved: dict[str, Any] | None, p: torch.Tensor, gi: int, pos: int) -> None:
    """Refuse to step a parameter whose state was made for another shape (``p.data = larger_tensor`` after it was
    stepped), as ``torch.optim.AdamW`` refuses (with a size-mismatch error from deep inside its update)."""
    mismatch = _state_mismatch(saved, p) if saved else None
    if mismatch is not None:
        key, shape = mismatch
        raise RuntimeError(
            f"FusedAdamW: parameter {pos} of param group {gi} has shape {tuple(p.shape)} but its optimizer state "
            f"({key}) has shape {tuple(shape)}: it was replaced (p.data = ...) after it was stepped, and AdamW "
            f"moments do not carry over to another shape. Run `del optimizer.state[p]` before the next step to "
            f"restart this parameter's state (the other parameters keep theirs), or build a new optimizer")


def _device_context(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    import contextlib

    return contextlib.nullcontext()


def _validate_group(group: dict[str, Any], index: int) -> None:
    """PyTorch's AdamW checks, plus the extensions'; names the group and the value."""
    lr, (beta1, beta2) = group["lr"], group["betas"]
    where = f"FusedAdamW param group {index}"
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"{where}: a tensor lr must have one element, got shape {tuple(lr.shape)}")
    if not 0.0 <= lr:
        raise ValueError(f"{where}: invalid learning rate {lr}")
    if not 0.0 <= group["eps"]:
        raise ValueError(f"{where}: invalid eps {group['eps']}")
    if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
        raise ValueError(f"{where}: betas must be in [0, 1), got {group['betas']}")
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"{where}: invalid weight_decay {group['weight_decay']}")
    if not 0.0 <= group["anchor_decay"]:
        raise ValueError(f"{where}: invalid anchor_decay {group['anchor_decay']}")
    max_norm = group["max_grad_norm"]
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"{where}: max_grad_norm must be > 0 or None, got {max_norm}")
    group["betas"] = (float(beta1), float(beta2))
