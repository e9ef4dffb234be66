"""Text augmentation: token dropout and span deletion on token ids, redrawn each epoch, never at evaluation, and
never under a cached frozen prefix."""

from __future__ import annotations

import random

import numpy as np
import pytest

from automl_ft.loaders import SPAN_DROP, TOKEN_DROPOUT, perturb_tokens


def test_token_dropout_keeps_the_ends_and_drops_about_its_share():
    ids = [101, *range(1, 201), 102]
    rng = random.Random(0)
    kept = [perturb_tokens(ids, "token-dropout", rng) for _ in range(50)]
    assert all(k[0] == 101 and k[-1] == 102 for k in kept)
    dropped = 1 - np.mean([len(k) - 2 for k in kept]) / 200
    assert abs(dropped - TOKEN_DROPOUT) < 0.02
    assert all(k[1:-1] == sorted(k[1:-1]) for k in kept)  # order kept


def test_span_drop_removes_one_contiguous_span():
    ids = [101, *range(1, 41), 102]
    out = perturb_tokens(ids, "span-drop", random.Random(3))
    width = round(SPAN_DROP * 40)
    assert len(out) == len(ids) - width
    gone = sorted(set(ids) - set(out))
    assert gone == list(range(gone[0], gone[0] + width))
    assert perturb_tokens([101, 5, 6, 102], "span-drop", random.Random(0)) == [101, 5, 6, 102]  # too short
    with pytest.raises(ValueError, match="unknown text augmentation"):
        perturb_tokens(ids, "shuffle", random.Random(0))


def test_training_batches_change_every_epoch_and_evaluation_batches_never(tiny_bert_dir):
    from automl_ft.config import TrialConfig
    from automl_ft.modalities import get_modality
    from automl_ft.train import Caches, build_model, make_preprocess
    from tests.conftest import make_text_rows

    texts = [" ".join([t] * 3) for t, _ in make_text_rows(4)]
    config = TrialConfig(task="text-classification", backbone=str(tiny_bert_dir), num_classes=3, max_length=32,
                         augment="token-dropout")
    backbone, _ = build_model(config)
    pre, caches, text = make_preprocess(backbone, config), Caches(), get_modality("text")

    def seen(train: bool, epoch: int) -> list:
        batches = text.make_batches(config, texts, np.zeros(len(texts)), pre, caches, train=train, batch_size=4)
        batches.set_epoch(epoch)
        out = {}
        for x, _, idx in batches:
            for row, i in enumerate(idx):
                out[i] = x["input_ids"][row][x["attention_mask"][row].bool()].tolist()
        return [out[i] for i in range(len(texts))]

    plain = [caches.tokens.get(pre, [t])[0] for t in texts]
    assert seen(False, 0) == seen(False, 1) == plain
    assert seen(True, 0) != seen(True, 1) and seen(True, 0) == seen(True, 0)
    assert seen(True, 0) != plain


def test_augmented_text_is_not_prefix_cached_and_bad_names_fail(tiny_bert_dir):
    from automl_ft.config import TrialConfig
    from automl_ft.prefix_cache import PrefixCache, applies
    from automl_ft.train import build_model

    base = {"task": "text-classification", "backbone": str(tiny_bert_dir), "num_classes": 3, "max_length": 32,
            "freeze_depth": 1}
    backbone, _ = build_model(TrialConfig(**base))
    assert applies(TrialConfig(**base), backbone, PrefixCache()) == 1
    assert applies(TrialConfig(**base, augment="span-drop"), backbone, PrefixCache()) == 0
    with pytest.raises(ValueError, match="text augment must be one of"):
        TrialConfig(**base, augment="crop-flip")


def test_a_text_space_searches_augmentation(tiny_text_space):
    import optuna

    from automl_ft.errors import SearchSpaceError
    from automl_ft.search.space import load_space
    from automl_ft.tasks import get_task

    raw = tiny_text_space.read_text()
    tiny_text_space.write_text(raw.replace("    max_length: 32\n", "    max_length: 32\n    augment: [none, span-drop]\n"))
    space = load_space(tiny_text_space, "text-classification")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {space.suggest(study.ask(), "text-classification", get_task("classification")(["a", "b"]), 0).augment
            for _ in range(20)}
    assert seen == {"none", "span-drop"}
    tiny_text_space.write_text(raw.replace("    max_length: 32\n", "    max_length: 32\n    augment: crop-flip\n"))
    with pytest.raises(SearchSpaceError, match="augment"):
        load_space(tiny_text_space, "text-classification")
