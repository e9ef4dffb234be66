"""The segmentation task on real masks (digits pasted on photographs, tests/segmentation_data.py): the behaviours
test_common.py checks for the per-input tasks, at the pixel level."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from automl_ft.tasks import detect_problem, get_task, load_task
from automl_ft.tasks.segmentation import IGNORE_INDEX, LOSSES, confusion, mask_at, read_mask, scores
from tests.segmentation_data import CLASSES, build

SIZE = 64


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = build(tmp_path_factory.mktemp("seg"), n=12, size=SIZE)
    paths = sorted(str(p) for p in (root / "masks").glob("*.png"))
    train, val = paths[:8], paths[8:]
    return get_task("segmentation").fit(CLASSES, train), train, val


def onehot_logits(masks, n, scale=6.0, noise=0.0, rng=None):
    out = np.zeros((len(masks), n, *masks[0].shape), dtype=np.float32)
    for i, m in enumerate(masks):
        for c in range(n):
            out[i, c][m == c] = scale
    if noise:
        out += noise * rng.normal(size=out.shape).astype(np.float32)
    return out


def test_never_detected_from_label_cells_and_images_only():
    assert detect_problem(["a.png", "b.png"], "|")[0] != "segmentation"
    cls = get_task("segmentation")
    assert cls.spatial_targets and cls.modalities == ("image",) and not cls.uses_label_smoothing


def test_metrics_on_hand_computed_confusion():
    true = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    cm = confusion(pred, true, 3)
    assert cm.sum() == 7  # the ignored pixel is out
    s = scores(cm)
    # class 0: tp 2, fp 0, fn 1 -> IoU 2/3; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2: tp 1, fp 1 -> 1/2
    assert s["iou"] == pytest.approx([2 / 3, 0.5, 0.5])
    assert s["dice"] == pytest.approx([0.8, 2 / 3, 2 / 3])
    assert s["miou"] == pytest.approx((2 / 3 + 1) / 3)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    # a class absent from truth and prediction does not count towards the mean
    assert scores(confusion(np.zeros((2, 2), int), np.zeros((2, 2), int), 3))["miou"] == 1.0


def test_perfect_noisy_and_trivial_predictions_rank_and_baseline_matches(split):
    task, train, val = split
    masks = [mask_at(p, SIZE) for p in val]
    perfect = task.metrics(onehot_logits(masks, 3), val)
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    assert perfect["num_examples"] == len(val) and perfect["num_pixels"] == sum(int((m < 3).sum()) for m in masks)
    noisy = task.metrics(onehot_logits(masks, 3, noise=4.0, rng=np.random.default_rng(0)), val)
    trivial_logits = np.zeros((len(val), 3, SIZE, SIZE), dtype=np.float32)
    trivial_logits[:, 0] = 5.0  # background is the majority class of the training pixels
    trivial = task.metrics(trivial_logits, val)
    assert 1.0 > noisy["miou"] > trivial["miou"] > 0
    assert task.baseline(train, val) == pytest.approx(trivial["miou"], abs=1e-12)
    assert int(np.argmax(task.train_pixels)) == 0
    json.dumps(noisy, allow_nan=False)
    assert set(noisy["per_class"]) == set(CLASSES)
    empty = task.metrics(trivial_logits[:0], [])
    assert empty["num_examples"] == 0 and empty["miou"] == 0.0
    assert "mIoU" in task.describe(noisy) and "n/a" not in " ".join(v for _, v in task.card_rows(noisy))


def test_metrics_read_masks_at_the_logits_resolution(split):
    task, _, val = split
    small = [mask_at(p, 32) for p in val]
    assert small[0].shape == (32, 32) and set(np.unique(small[0])) <= {0, 1, 2, IGNORE_INDEX}
    assert task.metrics(onehot_logits(small, 3), val)["miou"] == 1.0


def test_state_round_trip_and_decode(split):
    task, _, val = split
    again = load_task(json.loads(json.dumps(task.state_dict())))
    assert again.state_dict() == task.state_dict() and again.primary_metric == "miou"
    masks = [mask_at(p, SIZE) for p in val]
    logits = onehot_logits(masks, 3, noise=1.0, rng=np.random.default_rng(1))
    rows = again.decode(logits)
    assert len(rows) == len(val) and set(rows[0]) == {"mask", "class_fractions"}
    assert rows[0]["mask"].shape == (SIZE, SIZE) and rows[0]["mask"].dtype == np.uint8
    assert sum(rows[0]["class_fractions"].values()) == pytest.approx(1.0, abs=1e-5)
    assert list(rows[0]["class_fractions"]) == CLASSES
    assert task.agreement(logits, logits) == 1.0
    assert task.agreement(logits, onehot_logits(masks, 3)) < 1.0


def test_ce_loss_matches_the_numpy_loss_and_every_mix_trains(split):
    task, _, val = split
    masks = np.stack([mask_at(p, SIZE) for p in val])
    logits = onehot_logits(list(masks), 3, scale=2.0, noise=1.0, rng=np.random.default_rng(2))
    targets = torch.from_numpy(masks)
    got = task.loss(kind="ce")(torch.from_numpy(logits), targets)
    assert float(got) == pytest.approx(task.metrics(logits, val)["loss"], rel=1e-5)
    assert task.loss_choices()[0] == "dice:0.5" and set(task.loss_choices()) == set(LOSSES)
    for kind in task.loss_choices():
        x = torch.from_numpy(logits).clone().requires_grad_(True)
        loss = task.loss(kind=kind)(x, targets)
        loss.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        # the ignored pixels get no gradient
        assert float(x.grad.permute(1, 0, 2, 3)[:, targets == IGNORE_INDEX].abs().sum()) == 0.0
    # Dice lowers as predictions approach the masks
    dice = task.loss(kind="dice:0.75")
    assert float(dice(torch.from_numpy(onehot_logits(list(masks), 3, scale=20.0)), targets)) < float(
        dice(torch.from_numpy(logits), targets))
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        task.loss(kind="focal")


def test_summary_counts_pixels_per_class_and_ignored(split):
    task, train, val = split
    s = task.summary({"train": train, "val": val})
    json.dumps(s)
    total = sum(read_mask(p).size for p in train)
    assert sum(v["train"] for v in s["class_pixels"].values()) + s["ignored_pixels"]["train"] == total
    assert s["class_pixels"]["background"]["train"] == task.train_pixels[0]
