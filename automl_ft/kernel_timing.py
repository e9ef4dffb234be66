"""What the fused kernels cost a trial, and what the PyTorch reference would have cost (where measured).

During training, :class:`KernelTimer` accumulates the time of every optimizer step (FusedAdamW) and of every LoRA
layer's forward pass (forward hooks; on CUDA with events, so no host synchronisation is added to the step). At the
end of a trial on CUDA it runs a short A/B measurement of the same work with ``backend="torch"`` (the reference):
the optimizer on clones of the trainable tensors, and each distinct LoRA layer shape at the token count it saw,
forward and backward; the ratio scales the measured time into ``reference_estimate_ms``. On the CPU, ``auto`` runs
the reference itself, so there is nothing to compare and the estimate is None.

The result is stored on the trial as the user attribute ``kernel_time`` and shown by ``automl-ft report``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from automl_ft.kernels import LoRALinear
from automl_ft.kernels._backend import resolve_backend


class _Clock:
    """Wall time on the CPU; CUDA events (read once at the end) on a GPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.total_ms = 0.0
        self._pairs: list[tuple[Any, Any]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pairs.append((self._start, end))
            if len(self._pairs) > 4096:  # bound the number of live events
                self.flush()
        else:
            self.total_ms += (time.perf_counter() - self._start) * 1e3
        self._start = None

    def flush(self) -> float:
        if self._pairs:
            torch.cuda.synchronize()
            self.total_ms += sum(a.elapsed_time(b) for a, b in self._pairs)
            self._pairs.clear()
        return self.total_ms


class KernelTimer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.cuda = device.type == "cuda"
        self.model = model
        self.optimizer = optimizer
        self.lora = _Clock(self.cuda)
        self.adamw = _Clock(self.cuda)
        self.lora_calls = 0
        self.shapes: dict[tuple[int, int, int, int], int] = {}  # (tokens, in, out, r) -> calls
        self._hooks = []
        loras = [m for m in model.modules() if isinstance(m, LoRALinear)]
        for module in loras:
            self._hooks.append(module.register_forward_pre_hook(self._pre))
            self._hooks.append(module.register_forward_hook(self._post))
        self.lora_backend = resolve_backend(loras[0].backend, device.type, "lora_linear") if loras else None
        self.adamw_backend = resolve_backend(getattr(optimizer, "backend", "auto"), device.type, "adamw")

    def _pre(self, module: LoRALinear, args: tuple) -> None:
        if module.training:
            self.lora.start()
            x = args[0]
            key = (int(x.numel() // x.shape[-1]), module.in_features, module.out_features, module.r)
            self.shapes[key] = self.shapes.get(key, 0) + 1

    def _post(self, module: LoRALinear, args: tuple, output: torch.Tensor) -> None:
        if module.training:
            self.lora.stop()
            self.lora_calls += 1

    def step(self) -> None:
        """``optimizer.step()``, timed."""
        self.adamw.start()
        self.optimizer.step()
        self.adamw.stop()

    def close(self) -> dict[str, Any]:
        for h in self._hooks:
            h.remove()
        result: dict[str, Any] = {
            "backend": {"lora": self.lora_backend, "adamw": self.adamw_backend},
            "lora_ms": self.lora.flush() if self._hooks else None,
            "lora_calls": self.lora_calls,
            "adamw_ms": self.adamw.flush(),
            "reference_estimate_ms": None,
            "what": "LoRA layers' forward passes and optimizer steps of the whole trial",
        }
        if self.cuda:
            try:
                result.update(self._reference_estimate(result))
            except Exception as e:  # an estimate must never fail the trial
                result["reference_note"] = f"not measured: {type(e).__name__}: {str(e)[:120]}"
        return result

    def _reference_estimate(self, measured: dict[str, Any]) -> dict[str, Any]:
        """A/B ratios of fused vs reference on this trial's shapes, applied to the measured totals.

        The LoRA ratio is of forward + backward (what a step runs), applied to the measured forward time.
        """
        from automl_ft.kernels import FusedAdamW, lora_linear

        def timed(fn, reps: int = 5) -> float:
            fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
            return (time.perf_counter() - start) / reps

        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        clones = [p.detach().clone().requires_grad_(True) for p in params]
        for c, p in zip(clones, params):
            c.grad = torch.randn_like(p) * 1e-3
        ratios = {}
        fused = FusedAdamW(clones, lr=1e-5, backend="triton")
        ref = FusedAdamW([c.detach().clone().requires_grad_(True) for c in clones], lr=1e-5, backend="torch")
        for c, r in zip(clones, (q for g in ref.param_groups for q in g["params"])):
            r.grad = c.grad.clone()
        ratios["adamw"] = timed(ref.step) / max(timed(fused.step), 1e-9)
        estimate = measured["adamw_ms"] * ratios["adamw"]
        if self.shapes:
            fused_t = ref_t = 0.0
            dtype = next(self.model.parameters()).dtype
            for (tokens, fin, fout, r), calls in sorted(self.shapes.items(), key=lambda kv: -kv[1])[:8]:
                x = torch.randn(tokens, fin, device="cuda", dtype=dtype, requires_grad=True)
                w = torch.randn(fout, fin, device="cuda", dtype=dtype)
                a = torch.randn(r, fin, device="cuda", dtype=dtype, requires_grad=True)
                b = torch.randn(fout, r, device="cuda", dtype=dtype, requires_grad=True)
                for backend in ("triton", "torch"):
                    def run(backend=backend, x=x, w=w, a=a, b=b):
                        lora_linear(x, w, None, a, b, 2.0, 0.0, True, backend=backend).sum().backward()
                    t = timed(run) * calls
                    if backend == "triton":
                        fused_t += t
                    else:
                        ref_t += t
            ratios["lora"] = ref_t / max(fused_t, 1e-9)
            estimate += (measured["lora_ms"] or 0.0) * ratios["lora"]
        return {"reference_estimate_ms": estimate, "reference_ratios": ratios}
