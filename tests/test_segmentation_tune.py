"""Segmentation end to end on real images with real masks (handwritten digits pasted on photographs) and tiny
random encoders: tune (decoders searched) -> export (ONNX with dynamic batch and spatial axes, checked with
onnxruntime) -> predict (one mask PNG per image, one JSON line each, torch-free)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_ft.cli import main
from automl_ft.rundir import DATA_SUMMARY_FILE
from automl_ft.search.space import load_space
from tests.segmentation_data import CLASSES, build

REPO = Path(__file__).resolve().parents[1]


def tiny_space(path: Path) -> Path:
    path.write_text("""
task: image-segmentation
backbones:
  unet:test_efficientnet: {image_size: 64, freeze_depth: 0, augment: crop-flip, options: {pretrained: false}}
  fpn:test_efficientnet: {image_size: 64, freeze_depth: 1, augment: crop, options: {pretrained: false}}
adaptation:
  full: {lr: {low: 2.0e-3, high: 4.0e-3, log: true}}
training: {batch_size: 8, epochs: 2}
pruner: {type: none}
""")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("segtune")
    data = build(root / "ds", n=40, size=64)
    assert main(["tune", str(data), "--out", str(root / "run"), "--space", str(tiny_space(root / "s.yaml")),
                 "--trials", "2"]) == 0
    return root, data


def test_tune_searches_decoders_and_the_loss_mix_on_miou(run):
    import optuna

    from automl_ft.rundir import RunDir

    root, _ = run
    record = json.loads((root / "run" / "run.json").read_text())
    study = optuna.load_study(study_name=record["study"], storage=RunDir(root / "run").storage_url(record["storage"]))
    assert study.metric_names == ["val_miou"] and study.directions[0].name == "MAXIMIZE"
    params = [t.params for t in study.trials]
    assert all("backbone" in p and "task.loss" in p for p in params)
    summary = json.loads((root / "run" / DATA_SUMMARY_FILE).read_text())
    assert summary["task"] == "image-segmentation" and summary["classes"] == CLASSES
    assert summary["split_sizes"] == {"train": 32, "val": 4, "test": 4} and "class_pixels" in summary


def test_export_is_onnx_with_dynamic_batch_and_spatial_axes_checked_by_onnxruntime(run):
    import onnxruntime as ort

    best = run[0] / "run" / "best"
    metrics = json.loads((best / "metrics.json").read_text())
    onnx = metrics["onnx"]
    assert onnx["prediction_agreement"] > 0.999 and onnx["max_abs_logit_diff"] < 1e-3
    assert onnx["onnx_test_metric"] == "miou"
    test = metrics["test"]
    assert {"miou", "mean_dice", "pixel_accuracy", "per_class", "loss"} <= set(test)
    assert set(test["per_class"]) == set(CLASSES)
    state = json.loads((best / "task.json").read_text())
    assert state["task"] == "image-segmentation" and state["state"]["problem"] == "segmentation"
    session = ort.InferenceSession(str(best / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 64, 64), (3, 3, 96, 160)):
        out = session.run(["logits"], {"pixel_values": np.random.randn(*shape).astype(np.float32)})[0]
        assert out.shape == (shape[0], 3, *shape[2:])
    assert "Primary metric: miou (maximize)" in (best / "model_card.md").read_text()


def test_predict_writes_one_mask_per_image_at_its_own_size(run, tmp_path, capsys):
    root, data = run
    wide = tmp_path / "wide.jpg"
    Image.open(data / "images" / "img003.jpg").resize((150, 100)).save(wide)
    inputs = [str(data / "images" / "img000.jpg"), str(wide), str(data / "images" / "img000.jpg")]
    out_dir = tmp_path / "masks"
    assert main(["predict", str(root / "run" / "best"), *inputs, "--out-dir", str(out_dir)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == inputs
    assert [Path(r["mask"]).name for r in rows] == ["img000.png", "wide.png", "img000-1.png"]
    for r, size in zip(rows, [(64, 64), (150, 100), (64, 64)]):
        assert set(r) == {"input", "mask", "class_fractions"}
        assert list(r["class_fractions"]) == CLASSES and sum(r["class_fractions"].values()) == pytest.approx(1, 1e-4)
        im = Image.open(r["mask"])
        assert im.mode == "P" and im.size == size and set(np.unique(np.asarray(im))) <= {0, 1, 2}


def test_predict_needs_out_dir_for_masks_and_is_torch_free(run, tmp_path, capsys):
    root, data = run
    best = str(root / "run" / "best")
    assert main(["predict", best, str(data / "images" / "img000.jpg")]) == 2
    captured = capsys.readouterr()
    assert "pass --out-dir" in captured.err and not captured.out
    code = ("import sys; from automl_ft.cli import main; "
            f"rc = main(['predict', {best!r}, {str(data / 'images')!r}, '--out-dir', {str(tmp_path / 'm')!r}]); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-500:]
    assert len(out.stdout.splitlines()) == 40 and len(list((tmp_path / "m").glob("*.png"))) == 40


def test_the_bundled_space_searches_three_decoders_on_lite0():
    space = load_space(REPO / "search_spaces" / "image-segmentation.yaml", "image-segmentation")
    assert sorted(space.backbones) == ["deeplabv3plus:efficientnet-lite0", "fpn:efficientnet-lite0",
                                       "unet:efficientnet-lite0"]
    assert all(b.freeze_depth.high <= 7 for b in space.backbones.values())


def test_out_dir_is_refused_for_other_models_and_must_be_a_folder(tmp_path):
    from types import SimpleNamespace

    from automl_ft.errors import UsageError
    from automl_ft.predict import _masks_dir

    classifier = SimpleNamespace(spatial=False, task_name="image-classification")
    assert _masks_dir(classifier, None) is None
    with pytest.raises(UsageError, match="--out-dir is for segmentation models"):
        _masks_dir(classifier, str(tmp_path))
    segmenter = SimpleNamespace(spatial=True, task_name="image-segmentation")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        _masks_dir(segmenter, str(tmp_path / "f"))
    assert _masks_dir(segmenter, str(tmp_path / "new" / "masks")).is_dir()
