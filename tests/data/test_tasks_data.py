"""The data layer for every problem type (classification, multilabel, regression) and modality (text, image), on
real offline data: scikit-learn's bundled diabetes study and digits, and the shared SMS / Banking77 sets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from automl_ft.data import load_dataset
from automl_ft.errors import DataError, UsageError
from tests.conftest import (
    BANKING_FACETS,
    banking_facet_records,
    diabetes_records,
    write_digit_pairs,
    write_table,
)


def all_inputs(data) -> list[str]:
    return data.train.inputs + data.val.inputs + data.test.inputs


def all_labels(data) -> list:
    return data.train.labels + data.val.labels + data.test.labels


def label_by_input(data) -> dict[str, object]:
    return dict(zip(all_inputs(data), all_labels(data)))


@pytest.fixture
def banking_records(shared_dir) -> list[dict]:
    return banking_facet_records(shared_dir, n=400)


def joined(records: list[dict], sep: str = "|") -> list[dict]:
    """Label lists joined into one string cell, as a CSV holds them."""
    return [{**r, "label": sep.join(r["label"])} for r in records]


# ------------------------------------------------------------------------------------------- auto detection

@pytest.mark.parametrize("kind", ["sms", "diabetes", "banking", "pairs-number", "pairs-digits", "pairs-left"])
def test_auto_detects_modality_and_problem_with_a_reason(tmp_path, shared_dir, kind):
    if kind == "sms":
        path, task, reason = shared_dir / "data/sms_spam/sms_spam.csv", "text-classification", "single-label"
    elif kind == "diabetes":
        path = write_table(tmp_path / "diabetes.csv", diabetes_records())
        task, reason = "text-regression", "every label is a number, with 214 distinct values"
    elif kind == "banking":
        path = write_table(tmp_path / "facets.csv", joined(banking_facet_records(shared_dir, n=400)))
        task, reason = "text-multilabel", "contain the label separator '|'"
    else:
        target = kind.split("-")[1]
        path = write_digit_pairs(tmp_path / "pairs", target, n=200)
        task, reason = {"number": ("image-regression", "every label is a number"),
                        "digits": ("image-multilabel", "contain the label separator '|'"),
                        "left": ("image-classification", "10 distinct label values")}[target]
    data = load_dataset(path)
    assert data.task == task and data.summary["task"] == task
    assert data.modality == task.split("-")[0] and data.problem == task.split("-")[1]
    assert reason in data.summary["task_reason"], data.summary["task_reason"]
    assert "\n" not in data.summary["task_reason"]
    json.dumps(data.summary)  # data_summary.json


def test_explicit_task_overrides_detection(tmp_path, shared_dir):
    diabetes = write_table(tmp_path / "diabetes.csv", diabetes_records())
    as_classes = load_dataset(diabetes, task="text-classification")
    assert as_classes.task == "text-classification" and as_classes.summary["task_reason"] == \
        "--task text-classification"
    assert as_classes.num_classes > 100 and "--task text-regression" in as_classes.summary["warnings"][0]
    sms = load_dataset(shared_dir / "data/sms_spam/sms_spam.csv", task="text-multilabel")
    assert sms.task == "text-multilabel" and sms.classes == ["ham", "spam"]
    assert all(len(y) == 1 for y in all_labels(sms))  # one label per message, as a set
    records = joined(banking_facet_records(shared_dir, n=400))
    facets = write_table(tmp_path / "facets.csv", records)
    assert load_dataset(facets).classes == list(BANKING_FACETS)
    with pytest.raises(DataError, match=r"85 of 400 rows have .* an empty/NaN label \(85\)"):
        load_dataset(facets, task="text-classification")  # an empty cell is no class: missing, too many
    tagged = write_table(tmp_path / "tagged.csv", [r for r in records if r["label"]])
    single = load_dataset(tagged, task="text-classification")
    assert "card|payment" in single.classes  # the joined cell is one class when told so


def test_label_sep(tmp_path):
    path = write_digit_pairs(tmp_path / "pairs", "digits", n=200, label_sep=";")
    default = load_dataset(path)
    assert default.task == "image-classification" and "3;7" in default.classes  # ';' is no separator by default
    data = load_dataset(path, label_sep=";")
    assert data.task == "image-multilabel" and "';'" in data.summary["task_reason"]
    assert data.classes == [str(d) for d in range(10)] and data.summary["label_sep"] == ";"
    assert any(len(y) == 2 for y in all_labels(data)) and any(len(y) == 1 for y in all_labels(data))
    with pytest.raises(UsageError, match="--label-sep is empty"):
        load_dataset(path, label_sep="")


# ------------------------------------------------------------------------------------------------ multilabel

@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_multilabel_lists_and_empty_label_sets(tmp_path, banking_records, fmt):
    """JSON lists (JSONL, Parquet) or '|'-joined cells (CSV) are label sets; [] or an empty cell is an example
    with no label, kept and counted; a null label (JSONL/Parquet) is a missing row, dropped and counted."""
    records = banking_records if fmt != "csv" else joined(banking_records)
    if fmt != "csv":
        records = records + [{"text": "a query nobody labelled at all", "label": None}]
    data = load_dataset(write_table(tmp_path / f"facets.{fmt}", records))
    assert data.task == "text-multilabel" and data.classes == list(BANKING_FACETS)
    truth = {r["text"].strip(): sorted(r["label"]) for r in banking_records}
    got = label_by_input(data)
    assert got and all(sorted(data.classes[k] for k in got[t]) == truth[t] for t in got)
    n_empty = sum(1 for t in got if not truth[t])
    assert n_empty > 20 and sum(data.summary["no_label"].values()) == n_empty
    assert data.summary["dropped"]["missing_label"] == (0 if fmt == "csv" else 1)
    assert "a query nobody labelled at all" not in got
    assert data.summary["label_counts"]["card"]["train"] > 0


def test_multilabel_cleaning_drops_duplicates_and_conflicting_sets(tmp_path, banking_records):
    records = joined(banking_records)
    records += [records[0], records[1]]  # exact duplicates
    records += [{"text": "card payment pending twice", "label": "card|payment"},
                {"text": "card payment pending twice", "label": "card|pending"},  # another set: a conflict
                {"text": "a same set in another order", "label": "payment|card"},
                {"text": "a same set in another order", "label": "card|payment"}]  # the same set: a duplicate
    data = load_dataset(write_table(tmp_path / "f.csv", records))
    assert data.summary["dropped"]["conflicting_labels"] == 2
    assert data.summary["dropped"]["duplicates"] == 2 + 1
    assert "card payment pending twice" not in all_inputs(data)
    assert label_by_input(data)["a same set in another order"] == [data.classes.index("card"),
                                                                    data.classes.index("payment")]


def test_iterative_stratification_keeps_every_label_in_train(tmp_path, banking_records):
    data = load_dataset(write_table(tmp_path / "f.jsonl", banking_records), seed=3)
    assert "iterative stratification, seed 3" in data.summary["split"]
    counts = data.summary["label_counts"]
    assert all(counts[c]["train"] > 0 for c in data.classes), counts
    # Stratified: every split holds each label's share (within a few examples) of the whole.
    n = {s: len(getattr(data, s)) for s in ("train", "val", "test")}
    for c in data.classes:
        total = sum(counts[c].values())
        for s in ("val", "test"):
            assert abs(counts[c][s] - total * n[s] / sum(n.values())) <= 2, (c, counts[c])
    again = load_dataset(write_table(tmp_path / "g.jsonl", banking_records), seed=3)
    assert again.test.inputs == data.test.inputs and again.fingerprint == data.fingerprint


def test_iterative_split_moves_a_label_missing_from_train_back(monkeypatch):
    """A label that iterative stratification left out of train gets one example moved back from a held-out part."""
    import iterstrat.ml_stratifiers as ms

    from automl_ft.data.split import iterative_split

    class HoldOutLabel3:  # a splitter that puts every example of label 3 in the held-out part
        def __init__(self, n_splits, test_size, random_state):
            self.test_size = test_size

        def split(self, x, y):
            held = list(np.nonzero(y[:, 3])[0])
            rest = [i for i in range(len(y)) if i not in held]
            held += rest[: self.test_size - len(held)]
            yield np.array([i for i in range(len(y)) if i not in held]), np.array(held)

    monkeypatch.setattr(ms, "MultilabelStratifiedShuffleSplit", HoldOutLabel3)
    y = np.zeros((40, 4), dtype=int)
    y[np.arange(40), np.arange(40) % 3] = 1
    y[[5, 6], 3] = 1
    train, val, test = iterative_split(y, [0.8, 0.1, 0.1], 0)
    assert y[train, 3].sum() == 1 and sorted(train + val + test) == list(range(40))


def test_multilabel_given_splits_refuse_labels_unseen_in_train(tmp_path, banking_records):
    records = joined(banking_records)
    write_table(tmp_path / "train.csv", records[:300])
    write_table(tmp_path / "test.csv", records[300:] + [{"text": "a brand new facet", "label": "card|mortgage"}])
    with pytest.raises(DataError, match=r"labels in the test split are absent from train \('mortgage'\)"):
        load_dataset(tmp_path)


# ------------------------------------------------------------------------------------------------ regression

def test_regression_targets_in_original_units(tmp_path):
    records = diabetes_records()
    data = load_dataset(write_table(tmp_path / "d.parquet", records))
    assert data.task == "text-regression" and data.classes == [] and data.num_classes == 0
    truth = {r["text"]: r["label"] for r in records}
    assert all(truth[t] == y and isinstance(y, float) for t, y in label_by_input(data).items())
    assert data.summary["target"]["train"]["min"] >= 25 and data.summary["target"]["train"]["max"] <= 346
    assert "class_counts" not in data.summary


def test_regression_split_is_stratified_on_target_bins(tmp_path):
    """Every split covers the whole range of the target in equal shares: the task's 10 equal-count bins of the
    target each send the same number of examples (+-1) to val and to test. A plain random 10 % split of 442 sends
    anywhere from 1 to 8 of a bin's ~44 examples."""
    from automl_ft.tasks import get_task

    records = diabetes_records()
    path = write_table(tmp_path / "d.csv", records)
    texts = [r["text"] for r in records]
    bins = dict(zip(texts, get_task("regression").strata([r["label"] for r in records]).tolist()))
    assert len(set(bins.values())) == 10
    for seed in range(3):
        data = load_dataset(path, seed=seed)
        assert "stratified, seed" in data.summary["split"]
        for split in (data.val, data.test):
            per_bin = np.bincount([bins[t] for t in split.inputs], minlength=10)
            assert per_bin.max() - per_bin.min() <= 1, (seed, per_bin)
        means = [np.mean(s.labels) for s in (data.train, data.val, data.test)]
        assert max(means) - min(means) < 15  # the target's std is 77


def test_regression_cleaning_drops_conflicting_values(tmp_path):
    records = diabetes_records()
    records += [dict(records[0]), {**records[1], "label": records[1]["label"] + 1.0}]
    records += [{**records[2], "label": f"{records[2]['label']:.2f}"}]  # 151.00 is 151.0: a duplicate
    data = load_dataset(write_table(tmp_path / "d.jsonl", records))
    assert data.summary["dropped"]["conflicting_labels"] == 2
    assert data.summary["dropped"]["duplicates"] == 2
    assert records[1]["text"] not in all_inputs(data)


def test_non_numeric_regression_cells_are_one_line_naming_rows(tmp_path):
    records = diabetes_records()
    records[2]["label"] = "high"
    records[16]["label"] = "n/a (lost)"
    path = write_table(tmp_path / "d.csv", records)
    with pytest.raises(DataError) as e:
        load_dataset(path, task="text-regression")
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "label column 'label'" in msg
    assert "rows 3, 17" in msg and "not finite numbers" in msg
    # auto: a text column with words in it is classes, not a broken regression
    assert load_dataset(path).task == "text-classification"


def test_non_numeric_regression_cells_exit_2_through_the_cli(tmp_path, capsys):
    from automl_ft.cli import main

    records = diabetes_records()
    records[4]["label"] = "unknown"
    path = write_table(tmp_path / "d.csv", records)
    out = tmp_path / "run"
    assert main(["tune", str(path), "--task", "text-regression", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 5 are not finite numbers" in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- image tables

@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_image_table_with_relative_paths(tmp_path, monkeypatch, fmt):
    root = tmp_path / "sets" / "pairs"
    path = write_digit_pairs(root, "number", n=150, name=f"pairs.{fmt}")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the table's folder, not the working directory
    data = load_dataset(path)
    assert data.task == "image-regression" and data.summary["columns"] == {"image": "image", "label": "label"}
    assert all(Path(p).is_absolute() and Path(p).is_file() and Path(p).parent == root / "img"
               for p in all_inputs(data))
    assert len(set(all_labels(data))) > 50  # two-digit numbers: up to 100 values
    assert data.summary["dropped"]["unreadable_images"] == 0


def test_image_table_absolute_paths_and_named_columns(tmp_path):
    root = tmp_path / "pairs"
    src = write_digit_pairs(root, "left", n=120)
    import pandas as pd

    df = pd.read_csv(src)
    df = pd.DataFrame({"file": [str(root / p) for p in df["image"]], "digit": df["label"]})
    path = write_table(tmp_path / "elsewhere" / "t.csv", df.to_dict("records"))
    with pytest.raises(DataError, match=r"no 'image' column of image paths \(columns: file, digit\); pass --image"):
        load_dataset(path, task="image-classification")
    data = load_dataset(path, image_column="file", label_column="digit")
    assert data.task == "image-classification" and data.classes == [str(d) for d in range(10)]
    assert data.summary["columns"] == {"image": "file", "label": "digit"}
    with pytest.raises(DataError, match="no column 'picture'"):
        load_dataset(path, image_column="picture")


def test_missing_image_files_are_counted_and_too_many_are_an_error(tmp_path):
    root = tmp_path / "pairs"
    path = write_digit_pairs(root, "digits", n=200)
    for name in ("0003.png", "0150.png"):
        (root / "img" / name).unlink()
    (root / "img" / "0007.png").write_bytes(b"not a png")
    data = load_dataset(path)
    assert data.task == "image-multilabel" and len(all_inputs(data)) == 197
    assert data.summary["dropped"]["unreadable_images"] == 3
    assert data.summary["examples_read"] == 200
    (warning,) = [w for w in data.summary["warnings"] if "unreadable" in w]
    assert warning.startswith("3 missing or unreadable image(s) skipped (") and "0003.png" in warning
    for i in range(10, 20):  # 13 of 200 > 5 %
        (root / "img" / f"{i:04d}.png").unlink()
    with pytest.raises(DataError, match=r"13 of 200 images cannot be read"):
        load_dataset(path)


def test_image_table_decompression_bombs_are_skipped(tmp_path, monkeypatch):
    from PIL import Image

    from tests.conftest import make_png

    root = tmp_path / "pairs"
    path = write_digit_pairs(root, "number", n=100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 32x16 digit pairs pass; 40x40 warns
    (root / "img" / "0001.png").write_bytes(make_png(40, 40, (b"\x00" + b"\x00" * 5) * 40))
    data = load_dataset(path)
    assert data.summary["dropped"]["unreadable_images"] == 1
    assert "decompression bomb" in data.summary["dropped"]["unreadable_examples"][0]


def test_table_modality_rules(tmp_path, image_folder):
    root = tmp_path / "pairs"
    path = write_digit_pairs(root, "left", n=60)
    with pytest.raises(UsageError, match="--text-column and --image-column both given"):
        load_dataset(path, text_column="text", image_column="image")
    import pandas as pd

    df = pd.read_csv(path)
    df["text"] = "a caption"
    both = write_table(root / "both.csv", df.to_dict("records"))
    with pytest.raises(DataError, match="has both a 'text' and an 'image' column"):
        load_dataset(both)
    assert load_dataset(both, image_column="image").task == "image-classification"
    with pytest.raises(DataError, match="image folder gives one class per image"):
        load_dataset(image_folder, task="image-regression")
    assert load_dataset(image_folder).summary["task_reason"].startswith("an image folder")


# ---------------------------------------------------------------------------- classification stays identical

def split_digest(data) -> str:
    """The hash of every split's inputs and label indices (as computed on the code before tasks existed)."""
    parts = [data.train.inputs, data.train.labels, data.val.inputs, data.val.labels, data.test.inputs,
             data.test.labels]
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


CLASS_COUNTS = {"ham": {"train": 3614, "val": 452, "test": 452}, "spam": {"train": 514, "val": 64, "test": 64}}


def test_classification_is_byte_identical_on_shared_sms(shared_dir):
    """Fingerprint, classes and split indices of the shared SMS set, recorded with the data layer before problem
    types existed: a classification run keeps its study, its splits and its label indices."""
    data = load_dataset(shared_dir / "data/sms_spam/sms_spam.csv", seed=0)
    assert data.task == "text-classification" and data.classes == ["ham", "spam"]
    assert data.fingerprint == "06711d55d06ac208"
    assert split_digest(data) == "89d074ace6f63b7822b768e29dc7d1100c692700"
    assert data.summary["class_counts"] == CLASS_COUNTS
    assert load_dataset(shared_dir / "data/sms_spam/sms_spam.csv", seed=1).fingerprint == "a5b4fbbdf022b19a"


def test_cli_passes_image_column_and_label_sep(tmp_path, monkeypatch):
    from automl_ft import tuning
    from automl_ft.cli import build_parser, main

    seen = {}
    monkeypatch.setattr(tuning, "run_tune", lambda opts: seen.setdefault("opts", opts) and 0)
    assert main(["tune", "t.csv", "--out", str(tmp_path / "r"), "--task", "image-multilabel", "--image-column",
                 "file", "--label-sep", ";"]) == 0
    opts = seen["opts"]
    assert (opts.task, opts.image_column, opts.label_sep) == ("image-multilabel", "file", ";")
    choices = next(a for a in build_parser()._subparsers._group_actions[0].choices["tune"]._actions
                   if a.dest == "task").choices
    assert set(choices) == {"auto", "text-classification", "text-multilabel", "text-regression",
                            "image-classification", "image-multilabel", "image-regression", "image-segmentation"}
