"""Fused LoRA linear layer vs the PyTorch reference, PEFT's LoRA layer and the bare frozen layer (the floor).

Providers: ``fused`` is ``lora_linear(backend="triton")`` (every GEMM in Triton), ``fused-addmm`` is
``backend="addmm"`` (the frozen GEMMs in cuBLAS through torch.addmm/mm, the low-rank and dropout pieces in the same
Triton kernels); ``backend="auto"`` picks the faster of the two per shape, and its pick is recorded in the results
(``config.auto_choice``). The floor is what a frozen layer costs with no adapter at all: the forward GEMM plus the dx
GEMM of backward. Speed-ups are PEFT's time over ours; ``x_floor`` is a provider's time over the floor's (1.00 = LoRA
for free).

    python bench/bench_lora.py                          # CUDA, bf16: real layer shapes, r=16, dropout 0 and 0.1
    python bench/bench_lora.py --preset target          # the issue's target: M=8192, K=N=4096, r=16
    python bench/bench_lora.py --preset ranks           # r = 8 / 16 / 64 on the 7B-class projection
    python bench/bench_lora.py --device cpu --quick     # smoke run (fused only under TRITON_INTERPRET=1)
    python bench/bench_lora.py --device cpu --providers reference,peft,floor --shapes 2048,768,768  # CPU reference
    automl-ft bench lora [same flags]

Results: ``bench/results/lora-<device>-<date>.{json,csv}`` (``--out`` elsewhere) and a rich table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from automl_ft.bench.common import bench_ms, environment, peak_memory_mb, print_table, write_results


@dataclass(frozen=True)
class Shape:
    """One layer: ``tokens`` rows through a ``k -> n`` projection."""

    name: str
    tokens: int
    k: int
    n: int


# Projections of real models: BERT-base (hidden 768, MLP 3072), ViT-L (1024, 4096), 7B-class LLaMA (4096, 11008);
# token counts are batch x sequence of typical fine-tuning steps (2k-16k).
PRESETS: dict[str, list[Shape]] = {
    "default": [
        Shape("bert-base.attn", 4096, 768, 768),
        Shape("bert-base.mlp-up", 4096, 768, 3072),
        Shape("vit-l.attn", 8192, 1024, 1024),
        Shape("vit-l.mlp-up", 8192, 1024, 4096),
        Shape("7b.attn", 2048, 4096, 4096),
        Shape("7b.attn", 8192, 4096, 4096),
        Shape("7b.attn", 16384, 4096, 4096),
        Shape("7b.mlp-up", 8192, 4096, 11008),
    ],
    "target": [Shape("7b.attn", 8192, 4096, 4096)],
    "ranks": [Shape("7b.attn", 8192, 4096, 4096), Shape("bert-base.attn", 4096, 768, 768)],
    "quick": [Shape("tiny", 72, 80, 56)],
}
PRESET_RANKS = {"default": [16], "target": [16], "ranks": [8, 16, 64], "quick": [4]}
PROVIDERS = ("fused", "fused-addmm", "reference", "peft", "floor")
FUSED = {"fused": "triton", "fused-addmm": "addmm"}  # provider -> lora_linear backend
MODES = ("fwd", "bwd", "fwd+bwd")


def _parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for item in text.split(";"):
        if item.strip():
            m, k, n = (int(v) for v in item.split(","))
            shapes.append(Shape(f"{k}->{n}", m, k, n))
    return shapes


def _csv(text: str, cast: Callable[[str], Any]) -> list[Any]:
    return [cast(v) for v in text.split(",") if v.strip()]


def _peft_layer(weight, bias, lora_a, lora_b, alpha: float, dropout: float):
    """A real PEFT LoRA ``Linear`` (through ``get_peft_model`` on a one-layer model) holding the same weights."""
    import peft
    import torch
    from torch import nn

    n, k = weight.shape
    base = nn.Sequential(OrderedDict(proj=nn.Linear(k, n, bias=bias is not None, device=weight.device,
                                                    dtype=weight.dtype)))
    with torch.no_grad():
        base.proj.weight.copy_(weight)
        if bias is not None:
            base.proj.bias.copy_(bias)
    cfg = peft.LoraConfig(r=lora_a.shape[0], lora_alpha=alpha, lora_dropout=dropout, target_modules=["proj"])
    # Adapters in the layer's dtype, like ours: PEFT's default would upcast them to fp32 on a bf16 model.
    model = peft.get_peft_model(base, cfg, autocast_adapter_dtype=False)
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(lora_a)
        layer.lora_B["default"].weight.copy_(lora_b)
    layer.train()
    return layer, [layer.lora_A["default"].weight, layer.lora_B["default"].weight]


def _time_modes(forward, inputs, dy, modes, device, warmup_ms, rep_ms):
    """Yield ``(mode, median ms, peak MiB)``; backward alone re-runs autograd on one retained graph."""
    import torch

    forward()  # compile / autotune outside the timed region
    for mode in modes:
        if mode == "fwd":
            fn = forward
        elif mode == "bwd":
            y = forward()

            def fn(y=y):
                return torch.autograd.grad(y, inputs, dy, retain_graph=True)
        else:

            def fn():
                return torch.autograd.grad(forward(), inputs, dy)

        fn()
        yield mode, bench_ms(fn, device, warmup_ms=warmup_ms, rep_ms=rep_ms), peak_memory_mb(fn, device)


def run_case(shape: Shape, r: int, dropout: float, *, device: str, dtype, providers=PROVIDERS, modes=MODES,
             warmup_ms: float = 25, rep_ms: float = 100) -> list[dict[str, Any]]:
    """Time every provider and mode on one shape; rows carry ms, peak MiB, speed-up vs PEFT and ratio to the floor."""
    import torch
    import torch.nn.functional as F

    from automl_ft.kernels import lora_linear
    from automl_ft.kernels.reference import lora_linear_reference

    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    k, n = shape.k, shape.n
    x = rand(shape.tokens, k).requires_grad_()
    weight, bias = rand(n, k, scale=k**-0.5), rand(n, scale=0.1)
    # lora_b is random, not PEFT's zeros, so that no provider can skip work.
    lora_a, lora_b = rand(r, k, scale=k**-0.5).requires_grad_(), rand(n, r, scale=0.1).requires_grad_()
    alpha = 2.0 * r
    scaling = alpha / r
    dy = rand(shape.tokens, n)

    def make(provider):
        if provider in FUSED:
            return (lambda: lora_linear(x, weight, bias, lora_a, lora_b, scaling, dropout, True,
                                        backend=FUSED[provider]), [x, lora_a, lora_b])
        if provider == "reference":
            return (lambda: lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling, dropout, True),
                    [x, lora_a, lora_b])
        if provider == "peft":
            layer, params = _peft_layer(weight, bias, lora_a.detach(), lora_b.detach(), alpha, dropout)
            return (lambda: layer(x)), [x, *params]
        if provider == "floor":
            return (lambda: F.linear(x, weight, bias)), [x]
        raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")

    rows = []
    for provider in providers:
        forward, inputs = make(provider)
        for mode, ms, peak in _time_modes(forward, inputs, dy, modes, device, warmup_ms, rep_ms):
            rows.append({"shape": shape.name, "M": shape.tokens, "K": k, "N": n, "r": r, "dropout": dropout,
                         "mode": mode, "provider": provider, "ms": ms, "peak_mb": peak})
    same = {(q["mode"], q["provider"]): q["ms"] for q in rows}
    for row in rows:
        floor, peft_ms = same.get((row["mode"], "floor")), same.get((row["mode"], "peft"))
        row["x_floor"] = row["ms"] / floor if floor else None
        row["vs_peft"] = peft_ms / row["ms"] if peft_ms else None
    return rows


def _max_rel_err(shape: Shape, r: int, device: str, dtype, backend: str = "triton") -> float:
    """Fused vs reference on this shape (no dropout): max |diff| / max |ref| of the output, a sanity check."""
    import torch

    from automl_ft.kernels import lora_linear
    from automl_ft.kernels.reference import lora_linear_reference

    gen = torch.Generator(device="cpu").manual_seed(1)
    k, n = shape.k, shape.n
    t = [(torch.randn(*s, generator=gen) * sc).to(device=device, dtype=dtype)
         for s, sc in [((shape.tokens, k), 1.0), ((n, k), k**-0.5), ((n,), 0.1), ((r, k), k**-0.5), ((n, r), 0.1)]]
    with torch.no_grad():
        ours = lora_linear(*t, 2.0, backend=backend).float()
        ref = lora_linear_reference(*[v.double() for v in t], 2.0).float()
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _auto_choice(shape: Shape, r: int, dropout: float, device: str, dtype) -> str:
    """What ``backend="auto"`` picks for this shape (it times triton vs addmm itself, once per shape)."""
    import torch

    from automl_ft.kernels.lora import auto_base

    k, n = shape.k, shape.n
    t = [torch.zeros(*s, device=device, dtype=dtype) for s in [(shape.tokens, k), (n, k), (n,), (r, k), (n, r)]]
    return auto_base(*t, dropout)


def chosen_configs() -> dict[str, dict[str, str]]:
    """The autotuner's pick per kernel and key (what the figures ran with)."""
    from automl_ft.kernels import lora

    out = {}
    for name in ("_lora_xa_kernel", "_lora_fwd_kernel", "_lora_bwd_dyb_db_kernel", "_lora_bwd_dx_kernel"):
        tuner = getattr(lora, name, None)
        if tuner is not None:
            picks = {str(key): str(cfg) for key, cfg in getattr(tuner, "cache", {}).items()}
            if not picks and getattr(tuner, "best_config", None) is not None:
                picks = {"(single config)": str(tuner.best_config)}
            out[name] = picks
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from automl_ft.kernels import TRITON_INTERPRETER

    parser = argparse.ArgumentParser(prog="automl-ft bench lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                        help="default: bf16 on CUDA, fp32 on the CPU (the interpreter's bf16 is wrong)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--quick", action="store_true", help="one tiny shape, short timing (smoke test)")
    parser.add_argument("--shapes", help="'M,K,N;M,K,N' instead of a preset")
    parser.add_argument("--ranks", help="comma-separated ranks (default: the preset's)")
    parser.add_argument("--dropout", default="0,0.1", help="comma-separated LoRA dropout rates")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--warmup-ms", type=float, default=None)
    parser.add_argument("--rep-ms", type=float, default=None)
    parser.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)

    preset = "quick" if args.quick else (args.preset or ("default" if args.device.startswith("cuda") else "quick"))
    shapes = _parse_shapes(args.shapes) if args.shapes else PRESETS[preset]
    ranks = _csv(args.ranks, int) if args.ranks else PRESET_RANKS[preset]
    dropouts = _csv(args.dropout, float)
    modes = _csv(args.modes, str)
    providers = _csv(args.providers, str)
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    for p in providers:
        if p not in PROVIDERS:
            parser.error(f"unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")
    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible; use --device cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if on_cuda else "fp32")]
    if any(p in FUSED for p in providers) and not on_cuda and not TRITON_INTERPRETER:
        print("note: no CUDA and TRITON_INTERPRET is not set: the fused providers are skipped on the CPU")
        providers = [p for p in providers if p not in FUSED]
    quick = args.quick or preset == "quick"
    warmup = args.warmup_ms if args.warmup_ms is not None else (2 if quick else 25)
    rep = args.rep_ms if args.rep_ms is not None else (10 if quick else 100)

    rows: list[dict[str, Any]] = []
    errors = {}
    auto = {}
    for shape in shapes:
        for r in ranks:
            for provider in providers:
                if provider in FUSED:
                    errors[f"{provider} {shape.name} M={shape.tokens} r={r}"] = _max_rel_err(
                        shape, r, args.device, dtype, FUSED[provider])
            for p in dropouts:
                rows.extend(run_case(shape, r, p, device=args.device, dtype=dtype, providers=providers,
                                     modes=modes, warmup_ms=warmup, rep_ms=rep))
                if on_cuda and all(q in providers for q in FUSED):
                    auto[f"{shape.name} M={shape.tokens} r={r} dropout={p}"] = _auto_choice(shape, r, p, args.device,
                                                                                          dtype)

    env = environment(args.device)
    config = {"preset": preset, "dtype": str(dtype).replace("torch.", ""), "ranks": ranks, "dropout": dropouts,
              "modes": modes, "providers": providers, "warmup_ms": warmup, "rep_ms": rep,
              "timing": "triton.testing.do_bench median" if on_cuda else "perf_counter median (CPU)",
              "fused_vs_reference_max_rel_err": errors, "auto_choice": auto,
              "chosen_configs": chosen_configs() if any(q in FUSED for q in providers) else {},
              "single_config": os.environ.get("AUTOML_FT_SINGLE_CONFIG", "0"), "shapes": [vars(s) for s in shapes]}
    json_path, csv_path = write_results("lora", rows, env, config, out_dir=args.out)
    print_table(f"LoRA linear, {config['dtype']} on {env['device']} (ms: median; x_floor: / frozen layer; "
                f"vs_peft: PEFT / this)", rows,
                ["shape", "M", "K", "N", "r", "dropout", "mode", "provider", "ms", "x_floor", "vs_peft", "peak_mb"])
    if errors:
        print("fused vs float64 reference, max relative error of the output: "
              + ", ".join(f"{k}: {v:.2e}" for k, v in errors.items()))
    print(f"results: {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
