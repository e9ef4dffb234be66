"""Reading, cleaning and splitting labeled data."""

from __future__ import annotations

import json

import pytest

from automl_ft.data import IMAGE, TEXT, load_dataset
from automl_ft.data.split import stratified_split
from automl_ft.errors import DataError
from tests.conftest import make_image_folder, make_text_rows, write_csv


def test_csv_is_cleaned_and_split(tmp_path):
    rows = make_text_rows(20)
    rows += rows[:5]  # exact duplicates
    rows += [("contested words here", "food"), ("contested words here", "sports")]  # conflicting labels
    data = load_dataset(write_csv(tmp_path / "t.csv", rows))
    assert data.task == TEXT
    assert data.classes == ["food", "sports", "weather"]
    assert data.summary["dropped"]["duplicates"] == 5
    assert data.summary["dropped"]["conflicting_labels"] == 2
    assert len(data.train) + len(data.val) + len(data.test) == 60
    assert "contested words here" not in data.train.inputs + data.val.inputs + data.test.inputs
    for split in (data.train, data.val, data.test):  # stratified: every class in every split
        assert set(split.labels) == {0, 1, 2}
    assert len(data.val) == len(data.test) == 6


def test_split_is_seeded(tmp_path):
    path = write_csv(tmp_path / "t.csv", make_text_rows(20))
    a, b, c = (load_dataset(path, seed=s) for s in (0, 0, 1))
    assert a.test.inputs == b.test.inputs and a.fingerprint == b.fingerprint
    assert a.test.inputs != c.test.inputs and a.fingerprint != c.fingerprint


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_other_table_formats(tmp_path, fmt):
    import pandas as pd

    df = pd.DataFrame(make_text_rows(10), columns=["text", "label"])
    path = tmp_path / f"t.{fmt}"
    if fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    data = load_dataset(path)
    assert data.num_classes == 3 and len(data.train) + len(data.val) + len(data.test) == 30


def test_jsonl_lines_are_checked_one_by_one(tmp_path):
    lines = [json.dumps({"text": t, "label": y}) for t, y in make_text_rows(10)]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")  # a blank line is skipped
    assert load_dataset(path).num_classes == 3
    path.write_text("\n".join(lines[:4] + ['{"text": "cut off'] + lines[4:]) + "\n")
    with pytest.raises(DataError, match=r"line 5 is not valid JSON"):
        load_dataset(path)
    path.write_text("\n".join(lines[:2] + ['["a", "list"]']) + "\n")
    with pytest.raises(DataError, match=r"line 3 is a JSON list, not an object"):
        load_dataset(path)


@pytest.mark.parametrize("fmt,column", [("jsonl", "text"), ("parquet", "label")])
def test_object_or_list_columns_are_not_text(tmp_path, fmt, column):
    """str() of a dict or list would pass for text or a label: refused, naming the column."""
    import pandas as pd

    rows = [{"text": t, "label": y} for t, y in make_text_rows(10)]
    for r in rows:
        r[column] = {"nested": r[column]} if fmt == "jsonl" else [r[column]]
    path = tmp_path / f"t.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(DataError, match=rf"column '{column}' holds objects or lists"):
        load_dataset(path)


def test_label_column_is_detected_when_unambiguous(tmp_path):
    data = load_dataset(write_csv(tmp_path / "t.csv", make_text_rows(10), header=("text", "category")))
    assert data.summary["columns"] == {"text": "text", "label": "category"}


def test_ambiguous_columns_are_an_error(tmp_path):
    rows = [(t, y, "x") for t, y in make_text_rows(10)]
    with pytest.raises(DataError, match="pass --label-column"):
        load_dataset(write_csv(tmp_path / "t.csv", rows, header=("text", "category", "other")))


def test_named_column_must_exist(tmp_path):
    with pytest.raises(DataError, match="no column 'body'"):
        load_dataset(write_csv(tmp_path / "t.csv", make_text_rows(10)), text_column="body")


def test_non_utf8_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncaf\xe9 ok,a\nbad,b\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8.*line 2"):
        load_dataset(path)


def test_a_few_empty_texts_are_dropped_many_are_an_error(tmp_path):
    rows = make_text_rows(20) + [("", "food")]
    data = load_dataset(write_csv(tmp_path / "a.csv", rows))
    assert data.summary["dropped"]["empty_text"] == 1
    rows = make_text_rows(10) + [("  ", "food")] * 10
    with pytest.raises(DataError, match="empty text"):
        load_dataset(write_csv(tmp_path / "b.csv", rows))


def test_one_class_is_an_error(tmp_path):
    rows = [(f"text number {i}", "only") for i in range(10)]
    with pytest.raises(DataError, match="only 1 class"):
        load_dataset(write_csv(tmp_path / "t.csv", rows))


def test_test_labels_absent_from_train_are_an_error(tmp_path):
    write_csv(tmp_path / "train.csv", make_text_rows(10))
    write_csv(tmp_path / "test.csv", [("brand new thing", "unseen")])
    with pytest.raises(DataError, match="absent from train.*'unseen'"):
        load_dataset(tmp_path)


def test_table_folder_with_given_splits(tmp_path):
    rows = make_text_rows(20)
    write_csv(tmp_path / "train.csv", rows[:45])
    write_csv(tmp_path / "test.csv", rows[45:] + rows[:2])  # two test rows leak from train
    data = load_dataset(tmp_path)
    assert data.summary["dropped"]["duplicates_across_splits"] == 2
    assert not set(data.test.inputs) & set(data.train.inputs)
    assert len(data.test) == 15 and "val split off train" in data.summary["split"]


def test_image_folder_flat_and_split(tmp_path):
    flat = load_dataset(make_image_folder(tmp_path / "flat"))
    assert flat.task == IMAGE and flat.classes == ["blue", "green", "red"]
    assert len(flat.train) + len(flat.val) + len(flat.test) == 36
    root = tmp_path / "split"
    make_image_folder(root / "train")
    make_image_folder(root / "test", n_per_class=4, size=21)
    for name in ("red", "green", "blue"):  # one leaked image per class
        (root / "test" / name / "leak.png").write_bytes((root / "train" / name / "005.png").read_bytes())
    data = load_dataset(root)
    assert data.summary["dropped"]["duplicates_across_splits"] == 3
    assert len(data.test) == 12 and len(data.train) + len(data.val) == 36


def test_duplicate_and_conflicting_images(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "red" / "copy.png").write_bytes((root / "red" / "000.png").read_bytes())
    (root / "blue" / "stolen.png").write_bytes((root / "green" / "001.png").read_bytes())
    data = load_dataset(root)
    assert data.summary["dropped"]["duplicates"] == 1
    assert data.summary["dropped"]["conflicting_labels"] == 2


def test_unreadable_images_are_counted_or_fatal(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_per_class=30)
    (root / "red" / "zero.png").write_bytes(b"")
    data = load_dataset(root)
    assert data.summary["dropped"]["unreadable_images"] == 1
    for i in range(10):
        (root / "blue" / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="11 of 101 images cannot be read"):
        load_dataset(root)


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file or folder"),
    ("empty", "folder is empty"),
    ("txt", "unknown file type '.txt'"),
    ("image", "a single image"),
    ("nothing", "no images"),
])
def test_bad_paths(tmp_path, case, match):
    path = tmp_path / "x"
    if case == "empty":
        path.mkdir()
    elif case == "txt":
        path = tmp_path / "x.txt"
        path.write_text("hello\n")
    elif case == "image":
        path = make_image_folder(tmp_path / "i") / "red" / "000.png"
    elif case == "nothing":
        path.mkdir()
        (path / "notes.md").write_text("hi")
    with pytest.raises(DataError, match=match):
        load_dataset(path)


def test_task_mismatch(tmp_path, text_csv):
    with pytest.raises(DataError, match="--task image-classification but this is a table"):
        load_dataset(text_csv, task="image-classification")


def test_summary_is_json(tmp_path, text_csv):
    json.dumps(load_dataset(text_csv).summary)


def test_stratified_split_sizes_and_coverage():
    labels = [0] * 50 + [1] * 7 + [2] * 3
    train, val, test = stratified_split(labels, [0.8, 0.1, 0.1], seed=3)
    assert sorted(train + val + test) == list(range(60))
    for part in (val, test):
        assert {labels[i] for i in part} == {0, 1, 2}
    assert len(val) == 7  # 5 + 1 + 1
    assert stratified_split(labels, [0.8, 0.1, 0.1], seed=3) == [train, val, test]


def test_a_class_too_rare_for_every_split_is_kept_with_a_warning(tmp_path):
    rows = make_text_rows(10) + [("a lonely message about chess", "chess")]
    data = load_dataset(write_csv(tmp_path / "t.csv", rows))
    assert "chess" in data.classes and data.summary["class_counts"]["chess"] == {"train": 1, "val": 0, "test": 0}
    assert len(data.summary["warnings"]) == 1 and "'chess'" in data.summary["warnings"][0]
    assert "warnings" not in load_dataset(write_csv(tmp_path / "ok.csv", make_text_rows(10))).summary
