"""The model card: how an exported model was made, in Markdown, next to the model."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

CARD_FILE = "model_card.md"
PACKAGES = ("automl-ft", "torch", "triton", "optuna", "transformers", "timm", "onnx", "onnxruntime", "tokenizers",
            "peft", "numpy")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f} %"


def write_model_card(directory: Path, *, metrics: dict[str, Any], config: dict[str, Any],
                     data_summary: dict[str, Any], search: dict[str, Any], commands: list[str],
                     leaderboard_md: str = "") -> Path:
    """Write ``model_card.md`` into ``directory``.

    Args:
        metrics: what export wrote to metrics.json (test metrics and the ONNX check).
        config: the trial's TrialConfig as a dict. data_summary: the data summary.
        search: study name, storage (redacted), sampler, pruner, counts by state, best trial and value, times.
        commands: the exact command lines that built the study.
    """
    test = metrics.get("test", {})
    onnx = metrics.get("onnx", {})
    classes = data_summary.get("classes", [])
    dropped = data_summary.get("dropped", {})
    lines = [
        f"# Model card: {config.get('backbone')} fine-tuned for {data_summary.get('task')}",
        "",
        f"Made by automl-ft on {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "## Use",
        "",
        "```",
        "automl-ft predict MODEL_DIR INPUT...   # MODEL_DIR: this folder; INPUT: files, folders, tables or -",
        "```",
        "",
        "`model.onnx` takes " + (
            "`input_ids` and `attention_mask` (int64, [batch, sequence]) from `tokenizer.json`"
            if config.get("task") == "text-classification" else
            f"`pixel_values` (float32, [batch, 3, {config.get('image_size')}, {config.get('image_size')}], "
            "preprocessing in `preprocess.json`)") + " and returns `logits` over the classes in `labels.json`.",
        "",
        "## Data",
        "",
        f"- Source: `{data_summary.get('source')}`",
        f"- Classes ({data_summary.get('num_classes')}): " + ", ".join(f"`{c}`" for c in classes[:30])
        + (" ..." if len(classes) > 30 else ""),
        f"- Examples read: {data_summary.get('examples_read')}, kept: {data_summary.get('examples_kept')}",
        "- Dropped: " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items()
                                   if isinstance(v, int) and v) or "nothing"),
        f"- Split: {data_summary.get('split')}; sizes "
        + ", ".join(f"{k} {v}" for k, v in data_summary.get("split_sizes", {}).items()),
        *(f"- Warning: {w}" for w in data_summary.get("warnings", [])),
        "",
        "## Chosen configuration",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("backbone", "adaptation", "freeze_depth", "lora_rank", "lora_alpha", "lora_dropout", "lr",
                "head_lr_scale", "weight_decay", "label_smoothing", "dropout", "batch_size", "grad_accumulation",
                "epochs", "warmup_ratio", "max_grad_norm", "patience", "max_length", "image_size", "augment", "seed"):
        if key.startswith("lora_") and config.get("adaptation") != "lora":
            continue
        if config.get(key) is not None:
            v = config[key]
            lines.append(f"| {key} | {f'{v:.4g}' if isinstance(v, float) else v} |")
    lines += [
        "",
        "## Search",
        "",
        f"- Study `{search.get('study')}` in `{search.get('storage')}`",
        f"- Sampler: {search.get('sampler')}; pruner: {search.get('pruner')}",
        f"- Trials: {', '.join(f'{n} {state}' for state, n in (search.get('counts') or {}).items()) or 'none'}",
        f"- Best: trial {search.get('best_trial')} with validation accuracy {_pct(search.get('best_value'))} "
        f"(epoch {search.get('best_epoch')})",
        f"- Search wall time: {search.get('minutes', 0):.1f} min",
        "",
    ]
    if search.get("best_latency_ms") is not None:
        lines.insert(-1, f"- Latency of the chosen model: {search['best_latency_ms']:.2f} ms (onnxruntime, CPU, batch 1, "
                         "median after warm-up)")
    if search.get("pareto_front"):
        lines += ["### Pareto front (accuracy vs latency)", "", "| trial | val accuracy | latency ms |", "|---|---|---|"]
        lines += [f"| {p['trial']} | {_pct(p['val_accuracy'])} | {p['latency_ms']:.2f} |" for p in search["pareto_front"]]
        lines.append("")
    if leaderboard_md:
        lines += ["### Leaderboard", "", leaderboard_md, ""]
    lines += [
        "## Test metrics (held-out test split, evaluated once)",
        "",
        f"- Accuracy: {_pct(test.get('accuracy'))}",
        f"- Macro precision / recall / F1: {_pct(test.get('macro_precision'))} / {_pct(test.get('macro_recall'))} / "
        f"{_pct(test.get('macro_f1'))}",
        f"- Examples: {test.get('num_examples')}",
        "- Confusion matrix (rows: true, columns: predicted) in `metrics.json`",
        "",
        "## ONNX check (onnxruntime against PyTorch)",
        "",
        f"- Exporter: {onnx.get('exporter')}; samples: {onnx.get('num_samples')}",
        f"- Max abs logit difference: {onnx.get('max_abs_logit_diff', float('nan')):.3g}",
        f"- Predicted-class agreement: {_pct(onnx.get('prediction_agreement'))}",
        "",
    ]
    if metrics.get("int8"):
        q = metrics["int8"]
        lines += ["## INT8", "", f"- {q.get('method')}: test accuracy {_pct(q.get('test_accuracy'))}, "
                  f"usable: {q.get('usable')}" + (f" ({q.get('reason')})" if q.get("reason") else ""), ""]
    lines += ["## Made with", "", "```"]
    lines += [f"{k}=={v}" for k, v in package_versions().items()]
    lines += ["```", "", "## Commands", "", "```"]
    lines += commands or ["(unknown)"]
    lines += ["```", ""]
    path = directory / CARD_FILE
    path.write_text("\n".join(lines))
    (directory / "search.json").write_text(json.dumps(search, indent=2, default=str) + "\n")
    return path
