"""Reading, cleaning and splitting labeled data."""

from __future__ import annotations

import json

import pytest

from automl_ft.data import IMAGE, TEXT, load_dataset
from automl_ft.data.split import stratified_split
from automl_ft.errors import DataError
from tests.conftest import make_image_folder, make_png, make_text_rows, write_csv


def warnings_of(data) -> list[str]:
    """The data summary's warnings but the "no test split" one (small data: tested in tests/search)."""
    return [w for w in data.summary.get("warnings", []) if not w.startswith("no test split")]


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


@pytest.mark.parametrize("fmt,column,task", [("jsonl", "text", "auto"), ("parquet", "text", "auto"),
                                             ("jsonl", "label", "auto"), ("parquet", "label", "text-classification"),
                                             ("jsonl", "label", "text-regression")])
def test_object_or_list_columns_are_not_text(tmp_path, fmt, column, task):
    """str() of a dict or list would pass for text or a label: refused, naming the column. A text column never
    holds lists, a JSON object is never a label, and a list is a label only for a multi-label task (see
    tests/data/test_tasks_data.py)."""
    import pandas as pd

    rows = [{"text": t, "label": y} for t, y in make_text_rows(10)]
    for r in rows:
        r[column] = {"nested": r[column]} if fmt == "jsonl" and task == "auto" else [r[column]]
    path = tmp_path / f"t.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(path)
    match = "hold lists of labels" if task == "text-classification" else "not finite numbers" \
        if task == "text-regression" else rf"column '{column}' holds objects or lists"
    with pytest.raises(DataError, match=match):
        load_dataset(path, task=task)


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
    with pytest.raises(DataError, match="--task image-classification but this table has no 'image' column"):
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
    assert len(warnings_of(data)) == 1 and "'chess'" in warnings_of(data)[0]
    assert "warnings" not in load_dataset(write_csv(tmp_path / "ok.csv", make_text_rows(10))).summary


# ------------------------------------------------------------------------------------- data that looks wrong


def test_rows_with_the_wrong_number_of_fields_are_an_error_naming_their_lines(tmp_path):
    """pandas made the first field of a long row the index (the text column then held the label) and padded a
    short row with empty cells; both are refused, naming the lines."""
    good = "".join(f"{t},{y}\n" for t, y in make_text_rows(10))
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello there,food,extra\n" + good)
    with pytest.raises(DataError, match=r"1 row\(s\) have a different number of fields than the header's 2 "
                                        r"\(line 2\); quote fields that contain commas"):
        load_dataset(path)
    path.write_text("text,label\n" + good + "only a text\n" + good + "a,b,c,d\n")
    with pytest.raises(DataError, match=r"2 row\(s\) .* \(line 32, 63\)"):
        load_dataset(path)
    many = "text,label\n" + good + "x,y,z\n" * 7
    path.write_text(many)
    with pytest.raises(DataError, match=r"7 row\(s\) .* \(line 32, 33, 34, 35, 36 \.\.\.\)"):
        load_dataset(path)


def test_quoted_fields_may_hold_separators_and_newlines(tmp_path):
    rows = make_text_rows(10) + [("pizza, pasta\nand then\nsoup", "food")]
    path = write_csv(tmp_path / "t.csv", rows)
    path.write_text(path.read_text() + "bad,row,here\n")  # the line count after a multi-line field is right
    with pytest.raises(DataError, match=r"\(line 35\)"):
        load_dataset(path)
    data = load_dataset(write_csv(tmp_path / "ok.csv", rows))
    assert "pizza, pasta\nand then\nsoup" in data.train.inputs + data.val.inputs + data.test.inputs


@pytest.mark.parametrize("sep,suffix,name", [(";", "csv", "semicolons"), ("\t", "csv", "tabs"),
                                             (",", "tsv", "commas"), ("|", "csv", "'|'")])
def test_a_file_separated_by_another_character_is_detected(tmp_path, sep, suffix, name):
    rows = [(t + ", ok" if sep != "," else t, y) for t, y in make_text_rows(10)]  # commas in texts do not fool it
    data = load_dataset(write_csv(tmp_path / f"t.{suffix}", rows, sep=sep))
    assert data.summary["columns"] == {"text": "text", "label": "label"} and data.num_classes == 3
    expected = "tabs" if suffix == "tsv" else "commas"
    assert warnings_of(data) == [f"t.{suffix} is separated by {name}, not {expected}; read it that way"]


def test_semicolons_inside_a_comma_file_stay_text(tmp_path):
    rows = [(f"{t}; and; more", y) for t, y in make_text_rows(10)]
    data = load_dataset(write_csv(tmp_path / "t.csv", rows))
    assert all(";" in t for t in data.train.inputs) and "warnings" not in data.summary


def test_nan_and_empty_labels_are_missing_with_a_warning(tmp_path):
    rows = make_text_rows(20) + [("a text without label", "nan"), ("another one", "NaN"), ("and a third", " ")]
    data = load_dataset(write_csv(tmp_path / "t.csv", rows))
    assert data.classes == ["food", "sports", "weather"]  # no class "nan"
    assert data.summary["dropped"]["missing_label"] == 3 and data.summary["examples_read"] == 63
    assert warnings_of(data) == ["label column 'label': 3 row(s) with an empty or NaN label dropped as missing"]
    many = make_text_rows(10) + [(f"text {i}", "nan") for i in range(5)]
    with pytest.raises(DataError, match=r"5 of 35 rows have an empty text \(0\) or an empty/NaN label \(5\)"):
        load_dataset(write_csv(tmp_path / "many.csv", many))


def test_nan_labels_in_jsonl_and_parquet_are_missing(tmp_path):
    import pandas as pd

    rows = [{"text": t, "label": y} for t, y in make_text_rows(20)] + [{"text": "no label", "label": float("nan")}]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # writes NaN, as pandas does
    for name in ("t.parquet", "t.jsonl"):
        data = load_dataset(tmp_path / name)
        assert data.num_classes == 3 and data.summary["dropped"]["missing_label"] == 1, name


def test_labels_that_differ_only_in_case_warn(tmp_path):
    rows = make_text_rows(20)
    rows = [(t, "Food" if y == "food" and i % 2 else y) for i, (t, y) in enumerate(rows)]
    data = load_dataset(write_csv(tmp_path / "t.csv", rows))
    assert data.classes == ["Food", "food", "sports", "weather"]  # still separate: the warning says so
    assert warnings_of(data) == [("1 group(s) of labels differ only in case ('Food'/'food') and are trained "
                                         "as separate classes; rename them to one spelling if they are the same class")]


def test_class_folders_that_differ_only_in_case_warn(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_per_class=6)
    make_image_folder(root, n_per_class=6, classes=["Red"])  # grey pixels: other bytes than red/
    data = load_dataset(root)
    assert data.num_classes == 4
    assert len(warnings_of(data)) == 1
    assert "1 group(s) of class folders differ only in case ('Red'/'red')" in warnings_of(data)[0]


def test_a_numeric_label_column_with_many_values_is_regression_unless_told(tmp_path):
    rows = [(f"a flat with {i % 25} rooms, number {i}", f"{1000 + 37.5 * (i % 25):.1f}") for i in range(100)]
    path = write_csv(tmp_path / "prices.csv", rows, header=("text", "price"))
    auto = load_dataset(path)
    assert auto.task == "text-regression" and "25 distinct values" in auto.summary["task_reason"]
    data = load_dataset(path, task="text-classification")  # told: classes, with a warning that says how not to
    assert data.num_classes == 25
    (warning,) = warnings_of(data)
    assert warning.startswith("label column 'price': the labels look like a numeric target (25 distinct numbers)")
    assert "--task text-regression" in warning
    few = [(f"a review number {i}", str(i % 5 + 1)) for i in range(60)]  # star ratings: classes, no warning
    assert "warnings" not in load_dataset(write_csv(tmp_path / "stars.csv", few)).summary


def test_decompression_bombs_are_skipped_and_named(tmp_path, monkeypatch):
    """Over PIL's pixel limit an image only *warned* and was then decoded in full (and kept for training); over
    twice the limit it raised. Both are skipped now, counted as unreadable, one line naming the files."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 20x20 images pass; 40x40 warns; 50x50 raises
    root = make_image_folder(tmp_path / "imgs", n_per_class=30)
    row = b"\x00" + b"\x00" * 5  # one filter byte + 40 bits
    (root / "red" / "warns.png").write_bytes(make_png(40, 40, row * 40))
    (root / "red" / "raises.png").write_bytes(make_png(50, 50, (b"\x00" + b"\x00" * 7) * 50))
    data = load_dataset(root)
    assert data.summary["dropped"]["unreadable_images"] == 2
    assert not any("warns.png" in p or "raises.png" in p for p in data.train.inputs + data.val.inputs)
    examples = data.summary["dropped"]["unreadable_examples"]
    assert all("decompression bomb, skipped (Image size (" in e for e in examples), examples
    (warning,) = warnings_of(data)
    assert warning.startswith("2 unreadable image(s) skipped (") and "raises.png" in warning and "warns.png" in warning
