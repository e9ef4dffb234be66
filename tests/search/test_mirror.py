"""The mirroring check: the probe tells photos (mirror-invariant labels) from digit pairs (a mirrored pair is
another number) before the search, and the space drops its flipping augmentations for the latter."""

from __future__ import annotations

import pathlib

import pytest
import torch

from automl_ft.data import load_dataset
from automl_ft.search.mirror import check_mirroring, describe
from automl_ft.search.space import MIRRORING, load_space
from automl_ft.train import Caches


def test_digit_pairs_lose_their_labels_when_mirrored_so_the_search_stops_flipping(tmp_path):
    from bench.task_data import write_digit_pairs

    table = write_digit_pairs(tmp_path / "pairs", "number", n=300)
    data = load_dataset(table, task="image-regression", seed=0)
    space = load_space(None, "image-regression")
    assert space.mirrors() and space.first_trial["augment"] in MIRRORING
    check = check_mirroring(space, data, None, device=torch.device("cpu"), caches=Caches())
    assert check is not None and check["metric"] == "rmse"
    # the probe beats the mean predictor on the images, and loses that gain on them mirrored
    assert check["probe"] < check["baseline"] and not check["kept"], check
    assert check["probe_mirrored"] > check["probe"] + 0.5 * (check["baseline"] - check["probe"])
    assert "does not flip" in describe(check)
    assert space.without_mirroring() == ["efficientnet-lite0"]
    assert not space.mirrors() and space.first_trial["augment"] == "crop"
    assert space.backbones["efficientnet-lite0"].augment.value == "crop"
    assert space.first_trial_params()  # still inside the space


def test_photos_keep_their_labels_when_mirrored():
    shared = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10_subset"
    if not (shared / "train").is_dir():
        pytest.skip("the shared CIFAR subset is not here")
    from automl_ft.data import LabeledData, Split

    def folder(split: str, per_class: int) -> tuple[list[str], list[int]]:
        classes = sorted(p.name for p in (shared / split).iterdir() if p.is_dir())
        xs, ys = [], []
        for i, c in enumerate(classes):
            files = sorted((shared / split / c).glob("*.png"))[:per_class]
            xs += [str(f) for f in files]
            ys += [i] * len(files)
        return xs, ys

    classes = sorted(p.name for p in (shared / "train").iterdir() if p.is_dir())
    train, val = Split(*folder("train", 12)), Split(*folder("test", 6))  # the default probe: two networks at 224 px
    data = LabeledData("image-classification", classes, train, val, Split([], []), str(shared), {}, "test")
    space = load_space(None, "image-classification")
    check = check_mirroring(space, data, None, device=torch.device("cpu"), caches=Caches())
    assert check is not None and check["kept"], check
    assert check["probe"] > check["baseline"] + 0.3


def test_text_and_spaces_without_flips_are_not_checked(tmp_path):
    space = load_space(None, "image-classification")
    space.without_mirroring()
    assert not space.mirrors()
    data = load_dataset(_texts(tmp_path), seed=0)
    assert check_mirroring(load_space(None, "text-classification"), data, None, device=torch.device("cpu"),
                           caches=Caches()) is None


def _texts(tmp_path) -> pathlib.Path:
    from tests.conftest import make_text_rows, write_csv

    return write_csv(tmp_path / "texts.csv", make_text_rows(20))
