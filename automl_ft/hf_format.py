"""Hugging Face formats of an exported model: ``MODEL_DIR/hf/``, for the Hub's own libraries.

Text models (a Hugging Face encoder, pooling, a linear head: ``backbones.TextClassifier``)::

    hf/config.json, model.safetensors    the fine-tuned encoder (``save_pretrained``), with id2label/label2id and
                                         problem_type; loads with ``AutoModel.from_pretrained``
    hf/tokenizer.json, tokenizer_config.json, ...   the tokenizer (``model_max_length`` = the trained max length)
    hf/head.safetensors, hf/head.json    the classification head (``weight``, ``bias``) and the pooling
    hf/model.onnx                        the whole model (encoder + pooling + head -> ``logits``): the layout
                                         Optimum's ``ORTModelForSequenceClassification.from_pretrained`` reads
                                         (config.json + model.onnx with input_ids/attention_mask in, logits out)

    hf/modeling_automl_ft.py             the model class (hf_remote_code.py): encoder + pooling + head, named in
                                         config.json's ``auto_map`` for AutoModelForSequenceClassification

Why not ``BertForSequenceClassification``: every ``*ForSequenceClassification`` of transformers feeds the head
through a pooler (BERT: tanh(dense([CLS])); RoBERTa's head: dense + tanh on [CLS]), which cannot express the mean
pooling these models are trained with (nor the plain [CLS] of ``pooling: cls``). So the folder names its own class,
transformers' documented way for custom architectures: ``transformers.pipeline("text-classification", model=hf/,
trust_remote_code=True)`` then gives the fine-tuned model's labels and scores (the tests check: the same labels as
``automl-ft predict`` on the test split). Without remote code, ``pipeline("feature-extraction", model=hf/)`` (the
encoder's token states), pooled as ``head.json`` says and multiplied by the head, is exact too: :func:`hf_logits`.
The ONNX model gives the logits directly.

Image models (timm): ``hf/config.json`` + ``hf/model.safetensors`` written by timm's ``save_for_hf``, which
``timm.create_model("local-dir:PATH", pretrained=True)`` loads with the trained classifier (``label_names`` in
the config).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from automl_ft.errors import ModelDirError, UsageError
from automl_ft.rundir import HF_DIR, LABELS_FILE, ONNX_FILE

HEAD_FILE = "head.safetensors"
HEAD_CONFIG = "head.json"
REMOTE_MODULE = "modeling_automl_ft"  # hf/modeling_automl_ft.py: a copy of hf_remote_code.py


def export_hf(model_dir: str | Path, *, into: Path | None = None) -> Path:
    """Write the Hugging Face folder of the exported model in ``model_dir`` to ``model_dir/hf`` (or ``into``/hf).

    Built in a temporary sibling and swapped in, like the export itself. Returns the folder.

    Raises:
        ModelDirError: ``model_dir`` is not a complete export.
    """
    from automl_ft.predict import load_model_task

    model_dir = Path(model_dir).expanduser()
    for name in ("config.json", "model.safetensors", LABELS_FILE):
        if not (model_dir / name).is_file():
            raise ModelDirError(f"{model_dir}: no {name}; pass an exported model folder such as RUN_DIR/best")
    labels = json.loads((model_dir / LABELS_FILE).read_text())
    task = load_model_task(model_dir, labels)
    backbone, config = _load_backbone(model_dir)
    target = (into or model_dir) / HF_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{HF_DIR}.tmp-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        if type(backbone.model).__name__ == "TextClassifier":
            _save_text(backbone, config, task, labels, model_dir, tmp)
        else:
            _save_timm(backbone, config, task, labels, tmp)
        old = target.with_name(f".{HF_DIR}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.replace(old)
        tmp.replace(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _load_backbone(model_dir: Path) -> tuple[Any, Any]:
    """The exported model with its backbone (for the tokenizer and timm's config): architecture built empty, every
    tensor from the export's ``model.safetensors``."""
    from safetensors.torch import load_file

    from automl_ft.backbones import load_backbone
    from automl_ft.config import TrialConfig

    config = TrialConfig.load(model_dir / "config.json")
    options = {**config.backbone_options, "pretrained": False}
    backbone = load_backbone(config.backbone, config.num_classes, task=config.modality, options=options)
    backbone.model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    backbone.model.eval()
    return backbone, config


def _id2label(labels: list[str], head_size: int) -> dict[int, str]:
    # Regression has no classes: its one output is named "value" (predict's field).
    return {i: str(v) for i, v in enumerate(labels)} if labels else {i: "value" for i in range(head_size)}


def _save_text(backbone: Any, config: Any, task: Any, labels: list[str], model_dir: Path, out: Path) -> None:
    from safetensors.torch import save_file

    model = backbone.model
    encoder = model.encoder
    id2label = _id2label(labels, task.head_size)
    hf_config = encoder.config
    hf_config.id2label = id2label
    hf_config.label2id = {v: k for k, v in id2label.items()}
    hf_config.problem_type = task.hf_problem_type
    hf_config.auto_map = {"AutoModelForSequenceClassification": f"{REMOTE_MODULE}.AutomlFtForSequenceClassification"}
    hf_config.automl_ft_pooling = model.pooling
    encoder.save_pretrained(str(out), safe_serialization=True)
    shutil.copyfile(Path(__file__).with_name("hf_remote_code.py"), out / f"{REMOTE_MODULE}.py")
    tokenizer = backbone.tokenizer
    tokenizer.model_max_length = int(config.max_length or tokenizer.model_max_length)
    tokenizer.save_pretrained(str(out))
    save_file({"weight": model.head.weight.detach().contiguous(), "bias": model.head.bias.detach().contiguous()},
              str(out / HEAD_FILE))
    (out / HEAD_CONFIG).write_text(json.dumps({
        "pooling": model.pooling, "hidden_size": int(model.head.in_features), "num_outputs": task.head_size,
        "problem_type": task.hf_problem_type, "max_length": tokenizer.model_max_length,
        "note": "logits = head(pool(last_hidden_state)); mean pooling is over attention_mask; see "
                "automl_ft.hf_format.hf_logits"}, indent=2) + "\n")
    shutil.copy2(model_dir / ONNX_FILE, out / ONNX_FILE)


def _save_timm(backbone: Any, config: Any, task: Any, labels: list[str], out: Path) -> None:
    from timm.models import save_for_hf

    net = getattr(backbone.model, "net", None)
    if net is None:  # concat_backbone.py: two networks under one head are no single timm model
        raise UsageError(f"{backbone.name} is several networks under one head, which no Hugging Face format holds; "
                         "use the ONNX model (predict, serve)")
    names = list(_id2label(labels, task.head_size).values())
    net.pretrained_cfg = {**(getattr(net, "pretrained_cfg", None) or {}), "label_names": names,
                          "num_classes": task.head_size}
    save_for_hf(net, str(out), model_config={"num_classes": task.head_size, "label_names": names,
                                             "problem_type": task.hf_problem_type,
                                             "image_size": config.image_size},
                safe_serialization=True)


def hf_logits(hf_dir: str | Path, texts: list[str]) -> Any:
    """Logits of a text model's ``hf/`` folder with plain transformers: ``pipeline("feature-extraction")`` gives
    the encoder's token states, pooled as ``head.json`` says, times the head. NumPy array ``[len(texts), outputs]``.
    """
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import pipeline

    hf_dir = Path(hf_dir)
    if not (hf_dir / HEAD_CONFIG).is_file():
        raise UsageError(f"{hf_dir}: no {HEAD_CONFIG}; this is not the hf/ folder of an exported text model")
    head_config = json.loads((hf_dir / HEAD_CONFIG).read_text())
    head = load_file(str(hf_dir / HEAD_FILE))
    extractor = pipeline("feature-extraction", model=str(hf_dir), device="cpu")
    rows = []
    for text in texts:
        # one text per call: no padding, so every token is real and mean pooling needs no mask
        states = np.asarray(extractor(text, tokenize_kwargs={"truncation": True,
                                                             "max_length": head_config["max_length"]})[0])
        pooled = states[0] if head_config["pooling"] == "cls" else states.mean(0)
        rows.append(pooled @ head["weight"].T + head["bias"])
    return np.stack(rows).astype(np.float32)
