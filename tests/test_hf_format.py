"""Hugging Face formats (hf/), the Hub's YAML header of the model card, and ``automl-ft push`` (a local stand-in of
the Hub's upload calls, never the network)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from automl_ft.cli import main
from automl_ft.predict import Predictor, run_predict
from tests.test_predict import built_model


def predicted_labels(model: Path, inputs: list[str], stdin_text: str = "") -> list[str]:
    out = io.StringIO()
    assert run_predict(str(model), inputs, stdout=out, stdin=io.StringIO(stdin_text), stderr=io.StringIO()) == 0
    return [json.loads(line)["label"] for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def text_hf(tmp_path_factory):
    """A copy of test_predict's MiniLM probe model with its hf/ folder, and the data (test split of SMS spam)."""
    from automl_ft.hf_format import export_hf

    model, data = built_model(tmp_path_factory, "text")
    copy = tmp_path_factory.mktemp("hf-text") / "model"
    shutil.copytree(model, copy)
    return export_hf(copy), copy, data


def test_text_hf_folder_through_transformers_pipeline_equals_predict_on_the_test_split(text_hf):
    from transformers import AutoConfig, AutoModel

    from automl_ft.hf_format import hf_logits

    hf, model, data = text_hf
    texts = [str(t) for t in data.test.inputs]
    assert len(texts) >= 100
    want = predicted_labels(model, ["-"], "\n".join(t.replace("\n", " ") for t in texts) + "\n")
    logits = hf_logits(hf, texts)  # transformers.pipeline("feature-extraction") + pooling + head
    labels = json.loads((model / "labels.json").read_text())
    assert [labels[i] for i in logits.argmax(1)] == want
    np.testing.assert_allclose(logits, Predictor(model).predict_logits(texts), atol=2e-3)
    config = AutoConfig.from_pretrained(hf)
    assert config.id2label == dict(enumerate(labels)) and config.label2id == {v: i for i, v in enumerate(labels)}
    assert config.problem_type == "single_label_classification"
    assert type(AutoModel.from_pretrained(hf)).__name__ == "BertModel"


def test_text_classification_pipeline_with_the_folders_own_class_equals_predict_on_the_test_split(text_hf):
    """``pipeline("text-classification", trust_remote_code=True)``: the model class the folder names in its
    config (mean pooling + the trained head), not transformers' pooler head; labels and scores as ``predict``."""
    from transformers import pipeline

    hf, model, data = text_hf
    texts = [str(t) for t in data.test.inputs]
    want = predicted_labels(model, ["-"], "\n".join(t.replace("\n", " ") for t in texts) + "\n")
    pipe = pipeline("text-classification", model=str(hf), trust_remote_code=True, device="cpu")
    got = pipe(texts, batch_size=16, truncation=True, max_length=128)
    assert [g["label"] for g in got] == want
    probs = Predictor(model).predict_logits(texts[:20])
    probs = np.exp(probs - probs.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose([g["score"] for g in got[:20]], probs.max(1), atol=2e-3)


def test_text_hf_folder_has_the_layout_optimum_reads(text_hf):
    """What ORTModelForSequenceClassification.from_pretrained(hf) does (optimum-onnx cannot install here: it pins
    transformers < 4.58): read config.json, open model.onnx, feed the tokenizer's outputs that the graph takes,
    read "logits"."""
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    hf, model, data = text_hf
    assert AutoConfig.from_pretrained(hf).model_type == "bert"
    session = ort.InferenceSession(str(hf / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert set(names) <= {"input_ids", "attention_mask", "token_type_ids"}
    assert [o.name for o in session.get_outputs()] == ["logits"]
    tokenizer = AutoTokenizer.from_pretrained(hf)
    texts = [str(t) for t in data.test.inputs[:40]]
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    logits = session.run(["logits"], {k: enc[k].astype(np.int64) for k in names})[0]
    labels = json.loads((model / "labels.json").read_text())
    assert [labels[i] for i in logits.argmax(1)] == predicted_labels(model, ["-"], "\n".join(
        t.replace("\n", " ") for t in texts) + "\n")
    assert tokenizer.model_max_length == json.loads((model / "preprocess.json").read_text())["max_length"]


def test_timm_folder_loads_with_create_model_local_dir(tmp_path_factory):
    import timm
    import torch

    from automl_ft.hf_format import export_hf

    model, data = built_model(tmp_path_factory, "image")
    copy = tmp_path_factory.mktemp("hf-image") / "model"
    shutil.copytree(model, copy)
    hf = export_hf(copy)
    assert {"config.json", "model.safetensors"} <= {p.name for p in hf.iterdir()}
    net = timm.create_model(f"local-dir:{hf}", pretrained=True).eval()
    labels = json.loads((copy / "labels.json").read_text())
    assert net.pretrained_cfg["label_names"] == labels
    files = [str(p) for p in data.test.inputs[:12]]
    pre = Predictor(copy).pre
    with torch.no_grad():
        logits = net(torch.from_numpy(np.stack([pre.load(f) for f in files]))).numpy()
    assert [labels[i] for i in logits.argmax(1)] == predicted_labels(copy, files)


@pytest.mark.parametrize("problem", ["classification", "multilabel", "regression"])
def test_every_task_names_its_transformers_problem_type(problem):
    from automl_ft.tasks import get_task, list_tasks

    assert problem in list_tasks()
    # the values transformers' *ForSequenceClassification accepts for config.problem_type
    assert get_task(problem).hf_problem_type in ("regression", "single_label_classification",
                                                 "multi_label_classification")


def test_tune_writes_hf_and_the_hub_header_export_format_hf_adds_timm(tmp_path, text_csv, tiny_text_space,
                                                                       image_folder, tiny_image_space, capsys):
    run = tmp_path / "run"
    assert main(["tune", str(text_csv), "--out", str(run), "--space", str(tiny_text_space), "--trials", "1"]) == 0
    best = run / "best"
    assert (best / "hf" / "config.json").is_file() and (best / "hf" / "model.onnx").is_file()
    assert json.loads((best / "metrics.json").read_text())["hf"] == {"written": True}
    card = (best / "model_card.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "automl-ft" in meta["tags"] and "accuracy" in meta["metrics"] and meta["datasets"] == [text_csv.stem]
    assert "## Hugging Face formats" in card and card.index("# Model card") > card.index("---\n", 4)

    image_run = tmp_path / "image-run"
    assert main(["tune", str(image_folder), "--out", str(image_run), "--space", str(tiny_image_space),
                 "--trials", "1"]) == 0
    assert not (image_run / "best" / "hf").exists()  # auto: only Hugging Face backbones
    assert main(["export", str(image_run), "--format", "hf"]) == 0
    hf = image_run / "best" / "hf"
    assert json.loads((hf / "config.json").read_text())["num_classes"] == len(
        json.loads((image_run / "best" / "labels.json").read_text()))
    meta = yaml.safe_load((image_run / "best" / "model_card.md").read_text().split("---\n")[1])
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    capsys.readouterr()


class FakeHub:
    """Stands in for the Hub's create_repo / upload_folder: records the calls and the uploaded tree."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        from huggingface_hub import HfApi

        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}
        hub = self

        def create_repo(api, repo_id, **kw):
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
            if fail:
                raise fail
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, folder_path, repo_id, **kw):
            hub.calls.append(("upload_folder", {"repo_id": repo_id, **kw}))
            root = Path(folder_path)
            hub.files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
            return type("CommitInfo", (), {"oid": "abc123"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_uploads_hf_at_the_root_card_as_readme_and_the_export_beside(text_hf, monkeypatch, capsys):
    hf, model, _ = text_hf
    (model / "model_card.md").write_text("---\nlibrary_name: transformers\n---\n\n# Model card\n")
    hub = FakeHub(monkeypatch)
    assert main(["push", str(model), "me/spam-minilm", "--private"]) == 0
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1]["private"] is True and hub.calls[1][1]["repo_id"] == "me/spam-minilm"
    assert hub.files["README.md"].startswith(b"---\nlibrary_name")
    assert hub.files["config.json"] == (hf / "config.json").read_bytes()  # hf/ at the root: from_pretrained(repo)
    assert hub.files["automl-ft/model.onnx"] == (model / "model.onnx").read_bytes()
    assert "automl-ft/labels.json" in hub.files and not any(k.startswith("hf/") for k in hub.files)
    assert not any(k.startswith("automl-ft/hf") for k in hub.files)
    assert "me/spam-minilm" in capsys.readouterr().out


def test_push_refuses_bad_input_and_reports_hub_errors_on_one_line(text_hf, tmp_path, monkeypatch, capsys):
    _, model, _ = text_hf
    hub = FakeHub(monkeypatch)
    assert main(["push", str(model), "not a repo/id/x"]) == 2
    assert main(["push", str(tmp_path), "me/x"]) == 2
    assert hub.calls == []
    FakeHub(monkeypatch, fail=RuntimeError("401 Client Error: Unauthorized\nmore"))
    assert main(["push", str(model), "me/x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "not a Hugging Face repository id" in err[0] and "no model.onnx" in err[1]
    assert "push to me/x failed: 401 Client Error: Unauthorized" in err[2]
