"""The training loop: learning, per-epoch reports, early stopping, divergence, and exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from automl_ft.config import TrialConfig
from automl_ft.data import load_dataset
from automl_ft.train import (
    HISTORY_FILE,
    MODEL_FILE,
    PEFT_DIR,
    RESUME_META,
    TrainingDiverged,
    fit,
    load_trained_model,
    warmup_cosine,
)

CPU = torch.device("cpu")


def text_config(tiny_bert_dir, **kw) -> TrialConfig:
    base = dict(task="text-classification", backbone=str(tiny_bert_dir), num_classes=3, lr=3e-3, head_lr_scale=3.0,
                batch_size=8, epochs=3, max_length=32, patience=5, dropout=0.1)
    base.update(kw)
    return TrialConfig(**base)


@pytest.fixture
def text_data(text_csv):
    return load_dataset(text_csv)


def test_fit_learns_and_keeps_the_best_epoch(tmp_path, tiny_bert_dir, text_data):
    reports = []
    out = fit(text_config(tiny_bert_dir, epochs=4), text_data, tmp_path, device=CPU,
              report=lambda e, v: reports.append((e, v)))
    assert [e for e, _ in reports] == [1, 2, 3, 4] and out.epochs_run == 4
    assert out.best_value == max(v for _, v in reports) and out.best_value >= 0.75
    assert reports[out.best_epoch - 1][1] == out.best_value
    hist = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert (tmp_path / MODEL_FILE).is_file() and (tmp_path / RESUME_META).is_file()
    bb, cfg = load_trained_model(tmp_path)
    assert cfg.backbone == str(tiny_bert_dir)


def test_lora_fit_on_images(tmp_path, image_folder):
    data = load_dataset(image_folder)
    cfg = TrialConfig(task="image-classification", backbone="timm:test_efficientnet", num_classes=3, lr=5e-3,
                      adaptation="lora", lora_rank=4, lora_alpha=8, batch_size=8, epochs=2, image_size=32,
                      augment="crop-flip", backbone_options={"pretrained": False})
    out = fit(cfg, data, tmp_path, device=CPU)
    assert out.adaptation["lora_layers"] > 0 and out.epochs_run == 2
    assert (tmp_path / PEFT_DIR / "adapter_config.json").is_file()  # the best epoch's adapter, in PEFT's format


def test_early_stopping(tmp_path, tiny_bert_dir, text_data):
    cfg = text_config(tiny_bert_dir, lr=1e-9, head_lr_scale=1.0, epochs=6, patience=1)
    out = fit(cfg, text_data, tmp_path, device=CPU)
    assert out.stopped == "early_stopping" and out.epochs_run < 6


def test_patience_running_out_on_the_last_epoch_is_completion(tmp_path, tiny_bert_dir, text_data):
    cfg = text_config(tiny_bert_dir, lr=1e-9, head_lr_scale=1.0, epochs=2, patience=1)
    out = fit(cfg, text_data, tmp_path, device=CPU)
    assert out.epochs_run == 2 and out.stopped == "completed"


def test_divergence_is_detected(tmp_path, tiny_bert_dir, text_data, monkeypatch):
    from automl_ft.tasks.single_label import SingleLabel

    monkeypatch.setattr(SingleLabel, "loss", lambda self, **kw: lambda a, b: (a * float("nan")).sum())
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1, step 1"):
        fit(text_config(tiny_bert_dir), text_data, tmp_path, device=CPU)


def test_interrupted_training_resumes_to_the_same_result(tmp_path, tiny_bert_dir, text_data):
    """Kill after epoch 1, resume from the resume point: same history and weights as an uninterrupted run."""
    from safetensors.torch import load_file

    cfg = text_config(tiny_bert_dir, epochs=3)
    straight = fit(cfg, text_data, tmp_path / "straight", device=CPU)

    class Interrupt(Exception):
        pass

    def interrupt(epoch, value):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, text_data, tmp_path / "first", device=CPU, report=interrupt)
    resumed = fit(cfg, text_data, tmp_path / "second", device=CPU, resume_dir=tmp_path / "first")
    assert resumed.resumed_from_epoch == 1
    for a, b in zip(straight.history, resumed.history):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    wa = load_file(str(tmp_path / "straight" / MODEL_FILE))
    wb = load_file(str(tmp_path / "second" / MODEL_FILE))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_deadline_stops_after_the_first_epoch(tmp_path, tiny_bert_dir, text_data):
    out = fit(text_config(tiny_bert_dir, epochs=5), text_data, tmp_path, device=CPU, deadline=0.0)
    assert out.stopped == "deadline" and out.epochs_run == 1


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02) and f(100) == pytest.approx(0.0, abs=1e-9)
