"""Lower-fidelity first rungs (pruner.subset_fraction): the epochs of Hyperband's lowest rung train on part of
the data, every later epoch on all of it, and the learning-rate schedule spans the steps actually taken."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from automl_ft.cli import main
from automl_ft.config import TrialConfig
from automl_ft.data import TEXT, load_dataset
from automl_ft.errors import SearchSpaceError
from automl_ft.search.space import load_space
from automl_ft.train import HISTORY_FILE, fit
from tests.search.test_space import BASE, write

CPU = torch.device("cpu")


def test_epoch_batches_and_config_checks():
    cfg = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, max_length=32, epochs=3, subset_epochs=1,
                      subset_fraction=0.25)
    assert [cfg.epoch_batches(e, 10) for e in range(3)] == [3, 10, 10]  # ceil(2.5): never an empty epoch
    assert cfg.epoch_batches(0, 1) == 1
    with pytest.raises(ValueError, match="subset_fraction in \\(0, 1\\]"):
        TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, max_length=32, subset_fraction=0.0)


def test_space_applies_the_subset_to_trials_that_run_past_the_rung(tmp_path):
    space = load_space(write(tmp_path, BASE + "training: {epochs: 4}\n"
                                        "pruner: {type: hyperband, min_resource: 1, subset_fraction: 0.33}\n"), TEXT)
    cfg = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, max_length=32, epochs=4)
    low = space.at_fidelity(cfg)
    assert (low.subset_epochs, low.subset_fraction) == (1, 0.33)
    one_epoch = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, max_length=32, epochs=1)
    assert space.at_fidelity(one_epoch) == one_epoch  # its only report would be a partial epoch
    probe = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, max_length=32, adaptation="probe")
    assert space.at_fidelity(probe) == probe
    default = load_space(None, TEXT)  # off unless asked for: it has not measured better (bench_fidelity.py)
    assert default.at_fidelity(cfg) == cfg


def test_subset_needs_a_rung_pruner(tmp_path):
    with pytest.raises(SearchSpaceError, match="pruner.subset_fraction: applies to the rung pruners"):
        load_space(write(tmp_path, BASE + "pruner: {type: median, subset_fraction: 0.5}\n"), TEXT)
    with pytest.raises(SearchSpaceError, match="pruner.subset_fraction: value 0 is below the minimum 0.05"):
        load_space(write(tmp_path, BASE + "pruner: {subset_fraction: 0}\n"), TEXT)


def test_fit_trains_the_first_epoch_on_the_subset(tmp_path, tiny_bert_dir, text_csv):
    data = load_dataset(text_csv)
    base = {"task": "text-classification", "backbone": str(tiny_bert_dir), "num_classes": 3, "lr": 3e-3,
            "batch_size": 8, "epochs": 3, "max_length": 32, "patience": 5}
    whole = fit(TrialConfig(**base), data, tmp_path / "whole", device=CPU)
    part = fit(TrialConfig(**base, subset_epochs=1, subset_fraction=0.25), data, tmp_path / "part", device=CPU)
    per_epoch = -(-len(data.train) // 8)
    assert whole.steps == 3 * per_epoch
    assert part.steps == 2 * per_epoch + -(-per_epoch // 4)
    history = json.loads((tmp_path / "part" / HISTORY_FILE).read_text())
    assert history[0]["data_fraction"] == pytest.approx(-(-per_epoch // 4) / per_epoch, abs=1e-4)
    assert "data_fraction" not in history[1] and "data_fraction" not in history[2]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine ends where the steps end


def test_a_study_with_the_subset_records_it(tmp_path, text_csv, tiny_text_space):
    space = tiny_text_space.read_text().replace("pruner: {type: none}",
                                                "pruner: {type: hyperband, min_resource: 1, subset_fraction: 0.5}")
    space = space.replace("epochs: {low: 1, high: 2}", "epochs: 2")
    tiny_text_space.write_text(space)
    run = tmp_path / "run"
    assert main(["tune", str(text_csv), "--out", str(run), "--space", str(tiny_text_space), "--trials", "2",
                 "--cv", "off"]) == 0
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'study.db'}")
    for t in study.trials:
        assert t.user_attrs["config"]["subset_epochs"] == 1 and t.user_attrs["config"]["subset_fraction"] == 0.5
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert "data_fraction" in t.user_attrs["history"][0] and "data_fraction" not in t.user_attrs["history"][1]
