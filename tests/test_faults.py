"""Faults stay inside their trial: divergence, out-of-memory, a backbone that does not load."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
import torch

from automl_ft.cli import main
from automl_ft.config import TrialConfig
from automl_ft.rundir import RunDir
from automl_ft.search import objective as objective_module
from automl_ft.search.objective import Objective, TrialFailed


def study_of(run):
    record = json.loads((run / "run.json").read_text())
    return optuna.load_study(study_name=record["study"], storage=RunDir(run).storage_url(record["storage"]))


def test_nan_loss_prunes_the_trial_with_its_reason(tmp_path, text_csv, tiny_text_space, monkeypatch, capsys):
    from automl_ft.tasks.single_label import SingleLabel

    monkeypatch.setattr(SingleLabel, "loss", lambda self, **kw: lambda a, b: (a * float("nan")).sum())
    run = tmp_path / "run"
    assert main(["tune", str(text_csv), "--out", str(run), "--space", str(tiny_text_space), "--trials", "1"]) == 1
    trial = study_of(run).trials[0]
    assert trial.state.name == "PRUNED"
    assert trial.user_attrs["pruned_reason"].startswith("diverged: loss became nan at epoch 1")
    assert "No trial completed" in capsys.readouterr().err


def test_a_backbone_that_does_not_load_fails_only_its_trials(tmp_path, text_csv, tiny_bert_dir):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", broken / "config.json")  # a config, but no weights
    space = tmp_path / "space.yaml"
    space.write_text(f"""
task: text-classification
backbones:
  {tiny_bert_dir}: {{max_length: 32}}
  {broken}: {{max_length: 32}}
adaptation:
  full: {{lr: 3.0e-3}}
training: {{batch_size: 8, epochs: 1, head_lr_scale: 3.0}}
sampler: {{type: random}}
pruner: {{type: none}}
""")
    run = tmp_path / "run"
    assert main(["tune", str(text_csv), "--out", str(run), "--space", str(space), "--trials", "4", "--seed", "0"]) == 0
    trials = study_of(run).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("origin") != "probe"]
    assert failed and complete
    assert all(t.params["backbone"] == str(broken) for t in failed)
    assert all("cannot load Hugging Face model" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["backbone"] == str(tiny_bert_dir) for t in complete)
    assert (run / "best" / "model.onnx").is_file()


class _FakeTrial:
    def __init__(self):
        self.user_attrs: dict = {}
        self.number = 0

    def set_user_attr(self, k, v):
        self.user_attrs[k] = v


def _objective(tmp_path):
    obj = Objective.__new__(Objective)
    obj.device, obj.progress, obj.deadline, obj.caches, obj.backend, obj.data = (
        torch.device("cpu"), None, None, None, "torch", None)
    return obj


def test_out_of_memory_halves_the_batch_and_keeps_the_effective_batch(tmp_path, monkeypatch):
    calls = []

    def fake_fit(config, data, workdir, **kw):
        calls.append((config.batch_size, config.grad_accumulation))
        if len(calls) < 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "trained"

    monkeypatch.setattr(objective_module, "fit", fake_fit)
    cfg = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, batch_size=32, max_length=64)
    trial = _FakeTrial()
    assert _objective(tmp_path)._fit_with_oom_retry(trial, cfg, tmp_path, None, None) == "trained"
    assert calls == [(32, 1), (16, 2), (8, 4)]
    assert trial.user_attrs["oom_retries"] == 2 and cfg.effective_batch_size == 32


def test_out_of_memory_at_batch_one_fails_only_the_trial(tmp_path, monkeypatch):
    def always_oom(*a, **kw):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(objective_module, "fit", always_oom)
    cfg = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, batch_size=4, max_length=64)
    with pytest.raises(TrialFailed, match="out of memory even at batch size 1"):
        _objective(tmp_path)._fit_with_oom_retry(_FakeTrial(), cfg, tmp_path, None, None)


def test_trials_stuck_at_the_majority_class_baseline_are_pruned():
    from automl_ft.search.pruners import BaselinePruner

    study = optuna.create_study(direction="maximize", pruner=BaselinePruner(optuna.pruners.NopPruner(), 0.866))
    stuck, learning = study.ask(), study.ask()
    stuck.report(0.866, 1)
    assert not stuck.should_prune()  # one epoch is too early to judge
    stuck.report(0.866, 2)
    assert stuck.should_prune()
    learning.report(0.866, 1)
    learning.report(0.95, 2)
    assert not learning.should_prune()
    rank = optuna.create_study(direction="maximize", pruner=BaselinePruner(optuna.pruners.MedianPruner(
        n_startup_trials=0, n_warmup_steps=0), 0.1))
    for value in (0.9, 0.2):  # the wrapped pruner still prunes by rank
        t = rank.ask()
        t.report(value, 1)
        pruned = t.should_prune()
        rank.tell(t, value) if not pruned else rank.tell(t, state=optuna.trial.TrialState.PRUNED)
    assert pruned
