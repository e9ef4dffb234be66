"""Frozen-prefix caching: the same logits and the same training as the full model, computed once per text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl_ft.config import TrialConfig
from automl_ft.data import load_dataset
from automl_ft.train import Caches, fit
from tests.conftest import make_text_rows, write_csv


@pytest.fixture
def text_data(tmp_path):
    return load_dataset(write_csv(tmp_path / "texts.csv", make_text_rows(40)), seed=0)


def _config(data, backbone, **extra):
    values = dict(task=data.task, backbone=str(backbone), num_classes=data.num_classes, freeze_depth=1, lr=3e-3,
                  epochs=2, batch_size=8, max_length=32, dropout=0.1, seed=0)
    values.update(extra)
    return TrialConfig(**values)


@pytest.mark.parametrize("adaptation", ["full", "lora"])
def test_cached_prefix_trains_exactly_as_the_full_model(tmp_path, text_data, tiny_bert_dir, adaptation):
    """Same losses, validation scores and trained weights with and without the cache (dropout above the prefix
    included: the frozen layers are in eval mode, so skipping them draws no random numbers)."""
    from safetensors.torch import load_file

    extra = {"lora_rank": 4} if adaptation == "lora" else {}
    runs = {}
    for enabled in (False, True):
        caches = Caches()
        caches.prefix.enabled = enabled
        out = fit(_config(text_data, tiny_bert_dir, adaptation=adaptation, **extra), text_data,
                  tmp_path / str(enabled), device=torch.device("cpu"), caches=caches)
        runs[enabled] = out
    assert "prefix_cache" not in runs[False].adaptation
    assert runs[True].adaptation["prefix_cache"]["layers"] == 1
    assert runs[True].adaptation["prefix_cache"]["computed"] == len(text_data.train) + len(text_data.val)
    for a, b in zip(runs[False].history, runs[True].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    wa, wb = load_file(str(tmp_path / "False" / "model.safetensors")), load_file(str(tmp_path / "True" /
                                                                                      "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-4)


def test_a_second_trial_reuses_the_cached_states(tmp_path, text_data, tiny_bert_dir):
    caches = Caches()
    fit(_config(text_data, tiny_bert_dir, epochs=1), text_data, tmp_path / "a", device=torch.device("cpu"),
        caches=caches)
    out = fit(_config(text_data, tiny_bert_dir, epochs=1, lr=1e-3), text_data, tmp_path / "b",
              device=torch.device("cpu"), caches=caches)
    assert out.adaptation["prefix_cache"]["computed"] == 0
    assert out.adaptation["prefix_cache"]["reused"] == len(text_data.train) + len(text_data.val)
    # another depth is another prefix: computed anew
    out = fit(_config(text_data, tiny_bert_dir, epochs=1, freeze_depth=0), text_data, tmp_path / "c",
              device=torch.device("cpu"), caches=caches)
    assert "prefix_cache" not in out.adaptation


def test_the_budget_turns_the_cache_off(tmp_path, text_data, tiny_bert_dir):
    caches = Caches()
    caches.prefix.budget = 1000  # bytes: far below 120 texts x ~8 tokens x 32 x 4 B
    out = fit(_config(text_data, tiny_bert_dir, epochs=1), text_data, tmp_path / "a", device=torch.device("cpu"),
              caches=caches)
    assert "prefix_cache" not in out.adaptation and caches.prefix.used == 0
