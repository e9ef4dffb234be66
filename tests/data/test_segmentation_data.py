"""Segmentation data: images/ + masks/ folders and tables of paths, classes.json, cleaning counted and named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from automl_ft.data import detect_task, load_dataset
from automl_ft.errors import DataError
from automl_ft.preprocess import load_mask
from tests.segmentation_data import CLASSES, build


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build(tmp_path_factory.mktemp("segdata") / "ds", n=30)


def test_folder_is_detected_and_split_with_mask_paths(folder):
    assert detect_task(folder) == "image-segmentation"
    data = load_dataset(folder, seed=3)
    assert data.task == "image-segmentation" and data.problem == "segmentation"
    assert data.classes == CLASSES and data.summary["classes_from"].endswith("classes.json")
    sizes = data.summary["split_sizes"]
    assert sizes == {"train": 24, "val": 3, "test": 3}
    for split in (data.train, data.val, data.test):
        for x, y in zip(split.inputs, split.labels):
            assert x.endswith(".jpg") and y.endswith(".png") and x.split("/")[-1][:-4] == y.split("/")[-1][:-4]
    pixels = data.summary["class_pixels"]
    assert set(pixels) == set(CLASSES) and all(pixels[c]["train"] > 0 for c in CLASSES)
    assert sum(data.summary["ignored_pixels"].values()) > 0
    assert data.fitted_task().primary_metric == "miou"
    again = load_dataset(folder, seed=3)
    assert again.fingerprint == data.fingerprint and load_dataset(folder, seed=4).fingerprint != data.fingerprint


def test_palette_and_single_channel_masks_read_as_the_same_indices(folder):
    modes = {Image.open(p).mode for p in (folder / "masks").glob("*.png")}
    assert modes == {"P", "L"}
    m = load_mask(folder / "masks" / "img000.png")  # a palette PNG (every third mask)
    assert Image.open(folder / "masks" / "img000.png").mode == "P"
    assert set(np.unique(m)) <= {0, 1, 2, 255} and (m == 1).any() | (m == 2).any()


def test_without_classes_json_the_indices_seen_are_the_classes(tmp_path):
    root = build(tmp_path / "ds", n=12, classes_json=False)
    data = load_dataset(root, task="image-segmentation")
    assert data.classes == ["0", "1", "2"] and data.summary["task_reason"] == "--task image-segmentation"
    (root / "classes.json").write_text(json.dumps({"0": "bg", "1": "zero", "2": "one"}))
    assert load_dataset(root).classes == ["bg", "zero", "one"]


def test_cleaning_counts_and_names_every_problem(tmp_path):
    root = build(tmp_path / "ds", n=100)
    (root / "masks" / "img001.png").unlink()  # image without a mask
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "stray.png")  # mask without an image
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(root / "masks" / "img002.png")  # size mismatch
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        root / "masks" / "img003.png")  # a colour image, not indices
    bad = load_mask(root / "masks" / "img004.png").copy()
    bad[0, 0] = 7
    Image.fromarray(bad).save(root / "masks" / "img004.png")  # index 7: classes.json names 0..2
    data = load_dataset(root)
    d = data.summary["dropped"]
    assert (d["missing_mask"], d["orphan_masks"], d["size_mismatch"], d["unreadable_masks"],
            d["unknown_indices"]) == (1, 1, 1, 1, 1)
    assert data.summary["examples_kept"] == 96
    warnings = " | ".join(data.summary["warnings"])
    for name in ("img001.jpg", "stray.png", "img002.png 48x32 vs image 64x64", "img003.png", "img004.png: [7]"):
        assert name in warnings, name


def test_a_table_of_image_and_mask_paths(folder, tmp_path):
    # an absolute image path and a mask path relative to the table's folder
    rows = [f"{folder}/images/img{i:03d}.jpg,{folder.name}/masks/img{i:03d}.png" for i in range(20)]
    table = folder.parent / "pairs.csv"
    table.write_text("image,mask\n" + "\n".join(rows) + "\n")
    (folder.parent / "classes.json").write_text(json.dumps(CLASSES))
    data = load_dataset(table, task="image-segmentation")
    assert data.summary["columns"] == {"image": "image", "mask": "mask"} and data.summary["examples_kept"] == 20
    assert data.classes == CLASSES
    table.write_text("image,mask\n" + "\n".join(rows) + f"\n{folder}/images/img021.jpg,nowhere/x.png\n" * 30)
    with pytest.raises(DataError, match="x.png: no such file"):
        load_dataset(table, task="image-segmentation")


@pytest.mark.parametrize("defect, message", [
    ("no_masks", "no image in images/ has a mask of the same stem"),
    ("colour", "image/mask pairs cannot be used"),
    ("one_class", "needs at least two classes"),
    ("bad_classes_json", "classes.json: needs 2 to 255 distinct class names"),
])
def test_unusable_data_is_one_line_error(tmp_path, defect, message):
    root = build(tmp_path / "ds", n=10, classes_json=defect == "bad_classes_json")
    if defect == "no_masks":
        for p in (root / "masks").glob("*.png"):
            p.rename(p.with_name("x" + p.name))
    elif defect == "colour":
        for p in list((root / "masks").glob("*.png"))[:3]:
            Image.fromarray(np.dstack([np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint8),
                                       np.zeros((64, 64), np.uint8)])).save(p)
    elif defect == "one_class":
        for p in (root / "masks").glob("*.png"):
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(p)
    else:
        (root / "classes.json").write_text(json.dumps(["only"]))
    with pytest.raises(DataError, match=message) as e:
        load_dataset(root)
    assert "\n" not in str(e.value)
