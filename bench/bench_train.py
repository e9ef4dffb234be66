"""One training step of a text trial, as ``automl-ft tune`` runs it, against Hugging Face + PEFT + torch AdamW.

A step is what the training loop does per batch: forward, cross-entropy, backward, global-norm clipping, AdamW,
zero_grad. The batch is fixed (``--batch`` x ``--seq`` tokens, no padding) so every provider does the same work:

* ``ours full``: ``build_model`` (the registry backbone, freezing depth 0) + ``FusedAdamW`` with the clipping
  folded in, exactly the objects a trial builds (``automl_ft.train``); the embeddings (the stem) stay frozen at
  every freezing depth, so it trains 10.6 M of MiniLM's 22.7 M parameters where ``hf full`` trains all;
* ``ours lora rR``: the same with LoRA rank R on every attention and MLP linear (``LoRALinear``, ``lora_linear``),
  freezing depth 0;
* ``ours lora rR freeze K``: LoRA with the first K blocks frozen (the frozen prefix runs without autograd);
* ``hf full``: ``AutoModelForSequenceClassification`` + ``clip_grad_norm_`` + ``torch.optim.AdamW()``;
* ``peft lora rR``: the same model through ``peft.get_peft_model`` on query/key/value/dense, the usual hand-rolled
  Trainer + PEFT set-up.

The issue's reference on this 2-core CPU: MiniLM at batch 32 x 64 tokens, ~1.1 s full and ~0.85 s with PEFT LoRA
r=16 per step.

    python bench/bench_train.py                   # MiniLM, batch 32 x 64 tokens, rank 16
    python bench/bench_train.py --quick --out /tmp/x
    automl-ft bench train [same flags]

Results: ``bench/results/train-<device>-<date>.{json,csv}`` (``--out`` elsewhere) and a rich table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from automl_ft.bench.common import environment, print_table, write_results

PROVIDERS = ("ours full", "ours lora", "ours lora freeze", "hf full", "peft lora")


def _ours(backbone: str, num_classes: int, *, adaptation: str, rank: int, freeze: int, device: str):
    """The model and optimizer a trial builds, and its train step."""
    import torch

    from automl_ft.config import TrialConfig
    from automl_ft.train import build_model, make_optimizer, param_groups

    config = TrialConfig(task="text-classification", backbone=backbone, num_classes=num_classes,
                         adaptation=adaptation, lora_rank=rank if adaptation == "lora" else None,
                         lora_alpha=2.0 * rank if adaptation == "lora" else None, freeze_depth=freeze,
                         lr=1e-4, max_grad_norm=1.0, max_length=128)
    bb, _ = build_model(config)
    model = bb.model.to(device).train()
    optimizer = make_optimizer(param_groups(model, bb, config), config)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(inputs: dict[str, Any], labels: Any) -> float:
        loss = loss_fn(model(**inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _hf(model_dir: str, num_classes: int, *, rank: int | None, device: str):
    """``AutoModelForSequenceClassification`` (+ PEFT LoRA when ``rank``), clip_grad_norm_ and torch AdamW."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_classes)
    if rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                 target_modules=["query", "key", "value", "dense"],
                                                 task_type="SEQ_CLS"))
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(inputs: dict[str, Any], labels: Any) -> float:
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, sum(p.numel() for p in params)


def time_steps(step: Callable[..., float], inputs: dict[str, Any], labels: Any, *, warmup: int,
               repeats: int, device: str) -> list[float]:
    """Seconds per step, after ``warmup`` untimed steps (allocator, lazy optimizer state)."""
    import torch

    for _ in range(warmup):
        step(inputs, labels)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(inputs, labels)  # float(loss) synchronizes with the device
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    import torch

    from automl_ft.backbones import minilm_dir
    from automl_ft.predict import physical_cores

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="automl-ft bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6",
                        help="a text backbone of the registry (default minilm-l6); hf/peft providers need it to be "
                             "minilm-l6 or a local Hugging Face folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--freeze", type=int, default=3, help="frozen blocks of the 'ours lora freeze' provider")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the physical cores)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per provider (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per provider and round (default 5)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds; each provider keeps its best median (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 4 x 16 tokens, one short round")
    parser.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)

    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    for p in providers:
        if p not in PROVIDERS:
            parser.error(f"unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")
    threads = args.threads or physical_cores()
    if args.device == "cpu":
        torch.set_num_threads(threads)
    batch, seq = (4, 16) if args.quick else (args.batch, args.seq)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    hf_dir = str(minilm_dir()) if args.backbone == "minilm-l6" else args.backbone
    num_classes = 2

    gen = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (batch, seq), generator=gen).to(args.device),
              "attention_mask": torch.ones(batch, seq, dtype=torch.long).to(args.device)}
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(args.device)

    builders: dict[str, Callable[[], tuple[Callable[..., float], int]]] = {
        "ours full": lambda: _ours(args.backbone, num_classes, adaptation="full", rank=args.rank, freeze=0,
                                   device=args.device),
        "ours lora": lambda: _ours(args.backbone, num_classes, adaptation="lora", rank=args.rank, freeze=0,
                                   device=args.device),
        "ours lora freeze": lambda: _ours(args.backbone, num_classes, adaptation="lora", rank=args.rank,
                                          freeze=args.freeze, device=args.device),
        "hf full": lambda: _hf(hf_dir, num_classes, rank=None, device=args.device),
        "peft lora": lambda: _hf(hf_dir, num_classes, rank=args.rank, device=args.device),
    }
    steps: dict[str, tuple[Callable[..., float], int]] = {}
    for name in providers:
        torch.manual_seed(0)
        steps[name] = builders[name]()
        time_steps(steps[name][0], inputs, labels, warmup=warmup, repeats=0, device=args.device)
    best: dict[str, float] = {name: float("inf") for name in steps}
    for _ in range(rounds):  # interleaved, so a burst of load from elsewhere does not land on one provider only
        for name, (step, _) in steps.items():
            t = time_steps(step, inputs, labels, warmup=1, repeats=repeats, device=args.device)
            best[name] = min(best[name], statistics.median(t))

    label = {"ours lora": f"ours lora r{args.rank}", "ours lora freeze": f"ours lora r{args.rank} freeze {args.freeze}",
             "peft lora": f"peft lora r{args.rank}"}
    base = best.get("hf full")
    rows = [{"provider": label.get(name, name), "step_s": best[name], "trainable_m": round(n / 1e6, 3),
             "vs_hf_full": base / best[name] if base else None,
             "vs_peft": best["peft lora"] / best[name] if "peft lora" in best else None}
            for name, (_, n) in steps.items()]
    env = environment(args.device)
    config = {"backbone": args.backbone, "batch": batch, "seq": seq, "rank": args.rank, "freeze": args.freeze,
              "threads": threads if args.device == "cpu" else None, "warmup": warmup, "repeats": repeats,
              "rounds": rounds, "quick": args.quick,
              "step": "forward + cross-entropy + backward + global-norm clipping (1.0) + AdamW + zero_grad",
              "reference_on_2_core_cpu": "MiniLM 32 x 64 tokens: ~1.1 s full, ~0.85 s PEFT LoRA r=16"}
    json_path, _ = write_results("train", rows, env, config, out_dir=args.out)
    print_table(f"Training step, {args.backbone} {batch} x {seq} tokens on {env['device']} (s, best median of "
                f"{rounds} rounds)", rows)
    print(f"results: {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
