"""The model card: how an exported model was made, in Markdown, next to the model."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automl_ft.tasks import Task

from automl_ft.rundir import HF_DIR

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


def hub_header(*, config: dict[str, Any], data_summary: dict[str, Any], task: Task, metrics: dict[str, Any]
               ) -> str:
    """The Hugging Face Hub's YAML metadata block (``---`` ... ``---``) that opens a model card: library, tags,
    data set, metrics and pipeline tag, so the card renders and files on the Hub."""
    import yaml

    modality = str(config.get("task") or "text-classification").split("-")[0]  # "text" or "image"
    source = str(data_summary.get("source") or "")
    dataset = Path(source.rstrip("/")).stem if source else ""
    test = metrics.get("test") or {}
    pipeline_tag = "image-segmentation" if task.spatial_targets else f"{modality}-classification"
    meta = {
        "library_name": "timm" if modality == "image" else "transformers",
        "pipeline_tag": pipeline_tag,
        "tags": ["automl-ft", "onnx", pipeline_tag, task.hf_problem_type.replace("_", "-"),
                 str(config.get("backbone") or "").rsplit("/", 1)[-1]],
        "metrics": [k for k, v in test.items() if isinstance(v, (int, float)) and k not in ("num_examples", "loss")],
    }
    if dataset:
        meta["datasets"] = [dataset]
    meta["tags"] = [t for t in meta["tags"] if t]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def _hf_section(config: dict[str, Any]) -> list[str]:
    if str(config.get("task", "")).startswith("image-"):
        return ["## Hugging Face formats", "",
                (f"`{HF_DIR}/` is timm's folder (config.json + model.safetensors): "
                 f"`timm.create_model(\"local-dir:{HF_DIR}\", pretrained=True)` loads the trained model."), ""]
    return ["## Hugging Face formats", "",
            (f"`{HF_DIR}/` holds the fine-tuned encoder (`AutoModel.from_pretrained`), its tokenizer, the head "
            "(`head.safetensors`, pooling in `head.json`) and `model.onnx` in the layout Optimum's "
            "`ORTModelForSequenceClassification.from_pretrained` reads (it gives the logits directly). "
            "`transformers.pipeline(\"text-classification\")` would add an untrained [CLS] pooler head instead of "
            "this model's pooling: use `pipeline(\"feature-extraction\")`, then pool and apply the head "
            "(`automl_ft.hf_format.hf_logits` does exactly that)."), ""]


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f} %"


def write_model_card(directory: Path, *, metrics: dict[str, Any], config: dict[str, Any],
                     data_summary: dict[str, Any], search: dict[str, Any], commands: list[str], task: Task,
                     leaderboard_md: str = "") -> Path:
    """Write ``model_card.md`` into ``directory``.

    Args:
        task: the fitted task: its metric rows, primary metric and output format.
        metrics: what export wrote to metrics.json (test metrics and the ONNX check).
        config: the trial's TrialConfig as a dict. data_summary: the data summary.
        search: study name, storage (redacted), sampler, pruner, counts by state, best trial and value, times.
        commands: the exact command lines that built the study.
    """
    from automl_ft.metrics import format_metric

    test = metrics.get("test") or {}
    onnx = metrics.get("onnx", {})
    metric = task.primary_metric
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
            if str(config.get("task", "")).startswith("text-") else
            f"`pixel_values` (float32, [batch, 3, {config.get('image_size')}, {config.get('image_size')}], "
            "preprocessing in `preprocess.json`)") + f" and returns `logits`: {task.output_doc}.",
        "",
        "## Data",
        "",
        f"- Source: `{data_summary.get('source')}`",
        (f"- Classes ({len(classes)}): " + ", ".join(f"`{c}`" for c in classes[:30])
         + (" ..." if len(classes) > 30 else "")) if classes else "- Target: one number per example",
        f"- Task: {config.get('task')}" + (f" ({data_summary['task_reason']})" if data_summary.get("task_reason")
                                           else ""),
        f"- Primary metric: {metric} ({task.direction})" + (
            ": the classes are imbalanced (smallest under a third of the largest), so macro F1 rather than accuracy"
            if task.imbalanced else ""),
        f"- Examples read: {data_summary.get('examples_read')}, kept: {data_summary.get('examples_kept')}",
        "- Dropped: " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items()
                                   if isinstance(v, int) and v) or "nothing"),
        f"- Split: {data_summary.get('split')}; sizes "
        + ", ".join(f"{k} {v}" for k, v in data_summary.get("split_sizes", {}).items()),
        *(f"- Warning: {w}" for w in data_summary.get("warnings", [])),
        *([f"- Augmentation: {data_summary['mirroring']['note']}"] if data_summary.get("mirroring") else []),
        "",
        "## Chosen configuration",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("backbone", "adaptation", "freeze_depth", "lora_rank", "lora_alpha", "lora_dropout", "lr",
                "head_lr_scale", "weight_decay", "label_smoothing", "dropout", "batch_size", "grad_accumulation",
                "epochs", "warmup_ratio", "max_grad_norm", "patience", "max_length", "image_size", "augment", "loss",
                "imbalance", "head_init", "setfit_iterations", "probe_strength", "seed"):
        if key.startswith("lora_") and config.get("adaptation") != "lora":
            continue
        if key == "setfit_iterations" and config.get("adaptation") != "setfit":
            continue
        if config.get("adaptation") == "setfit" and key in ("epochs", "patience", "head_init", "head_lr_scale",
                                                            "label_smoothing"):
            continue  # one pass over its pairs; the head fitted in closed form
        if config.get("adaptation") == "probe" and key not in ("backbone", "adaptation", "freeze_depth",
                                                               "max_length", "image_size", "imbalance",
                                                               "probe_strength", "seed"):
            continue  # the probe's head is fitted in closed form: no optimiser settings to report
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
        f"- Best: trial {search.get('best_trial')} with validation {metric} "
        f"{format_metric(metric, search.get('best_value')) or 'n/a'} "
        f"(epoch {search.get('best_epoch')})",
        f"- Search wall time: {search.get('minutes', 0):.1f} min",
        "",
    ]
    if search.get("best_latency_ms") is not None:
        lines.insert(-1, f"- Latency of the chosen model: {search['best_latency_ms']:.2f} ms (onnxruntime, CPU, batch 1, "
                         "median after warm-up)")
    if search.get("pareto_front"):
        lines += [f"### Pareto front ({metric} vs latency)", "", f"| trial | val {metric} | latency ms |", "|---|---|---|"]
        lines += [f"| {p['trial']} | {format_metric(metric, p['val_score'])} | {p['latency_ms']:.2f} |"
                  for p in search["pareto_front"]]
        lines.append("")
    if leaderboard_md:
        lines += ["### Leaderboard", "", leaderboard_md, ""]
    cv = metrics.get("cv")
    if cv:
        refit = cv.get("refit") or {}
        lines += [
            "## Cross-validated estimate (small data)",
            "",
            f"- {data_summary.get('validation', 'repeated stratified k-fold')}",
            f"- {metric}: {format_metric(metric, cv['mean'])} +- {format_metric(metric, cv['std'])} (mean +- standard "
            f"deviation over {len(cv['scores'])} folds: " + ", ".join(format_metric(metric, v) for v in cv["scores"])
            + ")",
            f"- The exported model is the chosen configuration refit on all {refit.get('examples')} labelled examples "
            f"for {refit.get('epochs')} epoch(s) (the median of its folds' best): this estimate is for it.",
            "",
        ]
    if metrics.get("refit"):
        refit = metrics["refit"]
        lines += [(f"- The exported probe was refit on train + validation ({refit['examples']} examples) at the "
                   f"strength {refit['probe_strength']:g} picked on validation; the validation score above is the "
                   "train-only fit's."), ""]
    lines += [
        "## Test metrics (held-out test split, evaluated once)",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in task.card_rows(test)),
        "",
        f"- Examples: {test.get('num_examples')}; every metric, per class or per label, in `metrics.json`",
        "",
    ] if test else [
        "## Test metrics",
        "",
        "- None: the data is too small to hold out a test split that measures anything; see the cross-validated "
        "estimate above.",
        "",
    ]
    lines += [
        "## ONNX check (onnxruntime against PyTorch)",
        "",
        f"- Exporter: {onnx.get('exporter')}; samples: {onnx.get('num_samples')}",
        f"- Max abs logit difference: {onnx.get('max_abs_logit_diff', float('nan')):.3g}",
        f"- Prediction agreement: {_pct(onnx.get('prediction_agreement'))}",
        "",
    ]
    if metrics.get("int8"):
        q = metrics["int8"]
        lines += ["## INT8", "", f"- {q.get('method')}: test {q.get('metric', 'accuracy')} "
                  f"{format_metric(q.get('metric', 'accuracy'), q.get('test_score', q.get('test_accuracy')))}, "
                  f"usable: {q.get('usable')}" + (f" ({q.get('reason')})" if q.get("reason") else ""), ""]
    lines += ["## Made with", "", "```"]
    lines += [f"{k}=={v}" for k, v in package_versions().items()]
    lines += ["```", "", "## Commands", "", "```"]
    lines += commands or ["(unknown)"]
    lines += ["```", ""]
    if (directory / HF_DIR).is_dir():
        lines[lines.index("## Data"):lines.index("## Data")] = _hf_section(config)
    path = directory / CARD_FILE
    path.write_text(hub_header(config=config, data_summary=data_summary, task=task, metrics=metrics)
                    + "\n".join(lines))
    (directory / "search.json").write_text(json.dumps(search, indent=2, default=str) + "\n")
    return path
