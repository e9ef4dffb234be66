"""``load_dataset``: from a path to a cleaned, split :class:`LabeledData` with a summary of what was done.

The modality (text or image) decides how inputs are read; the problem type (classification, multilabel,
regression; :mod:`automl_ft.tasks`) decides what a label cell means, how the split is stratified and which label
statistics the summary carries. Neither branches on the other.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from automl_ft.errors import DataError, UsageError

from .cleaning import case_collisions, dedupe
from .images import check_images, is_image, list_images, require_folder, scan_class_folders, split_folders
from .split import TEST_FRACTION, VAL_FRACTION, split_strata
from .tables import (
    SEPARATORS,
    check_plain,
    choose_columns,
    choose_image_columns,
    match_column,
    read_table,
    table_format,
)
from .types import IMAGE_MODALITY, TEXT_MODALITY, LabeledData, Split

# More unreadable images or empty rows than this is a broken data set, not noise to drop quietly.
MAX_BAD_FRACTION = 0.05
SPLITS = ("train", "val", "test")
# Why an image folder is single-label: one sub-folder per class gives exactly one label per image.
FOLDER_REASON = "an image folder: each image's class is its sub-folder, one label per image"


def detect_task(path: Path) -> str:
    """``image-segmentation`` for an images/ + masks/ folder, ``image-classification`` for an image folder,
    ``text-classification`` for a table or a folder of tables (the modality only; :func:`load_dataset` resolves the
    problem type from the labels)."""
    from .segmentation import TASK, is_segmentation_folder

    if is_segmentation_folder(path):
        return TASK
    kind = _data_kind(path)
    return "image-classification" if kind == "folder" else "text-classification"


def _data_kind(path: Path) -> str:
    """``"folder"`` for an image folder, ``"table"`` for a table or a folder of train/val/test tables."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass an image folder or a CSV/TSV/JSONL/Parquet file")
    if path.is_file():
        if table_format(path):
            return "table"
        if is_image(path):
            raise DataError(f"{path}: a single image; pass a folder with one sub-folder of images per class, or a "
                            "table of image paths and labels")
        raise DataError(f"{path}: unknown file type {path.suffix or '(none)'!r}; use an image folder or a "
                        ".csv/.tsv/.jsonl/.parquet file")
    if _split_tables(path):
        return "table"
    if any(True for _ in list_images(path)[:1]):
        return "folder"
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DataError(f"{path}: the folder is empty; put one sub-folder of images per class in it")
    raise DataError(f"{path}: no images (.png/.jpg/...) and no train.csv/.tsv/.jsonl/.parquet in it; pass an image "
                    "folder with one sub-folder per class, or a labeled table")


def _split_tables(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and table_format(p) and p.stem.lower() in ("train", "val", "valid", "validation", "test"):
            name = {"valid": "val", "validation": "val"}.get(p.stem.lower(), p.stem.lower())
            found.setdefault(name, p)
    return found if "train" in found else {}


def _parse_task_option(task: str) -> tuple[str | None, str | None]:
    from automl_ft.tasks import FULL_TASKS, split_task_name

    if task == "auto":
        return None, None
    try:
        return split_task_name(task)
    except ValueError:
        raise DataError(f"unknown task {task!r}; use auto, {', '.join(FULL_TASKS)}") from None


def load_dataset(path: str | Path, *, task: str = "auto", text_column: str | None = None,
                 label_column: str | None = None, image_column: str | None = None, label_sep: str = "|",
                 seed: int = 0, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION
                 ) -> LabeledData:
    """Read, clean and split labeled data.

    Args:
        path: an image folder (class sub-folders, optionally under train/val/test), a table file, or a folder
            holding train/val/test tables. A table holds a text column (text tasks) or an image-path column
            (image tasks; relative paths resolve against the table's folder).
        task: ``auto`` or a full task name (``text-classification``, ``image-regression``...). ``auto`` takes the
            modality from the data (an image folder or a table with an ``image`` column: image; else text) and the
            problem from the labels (:func:`automl_ft.tasks.detect_problem`); ``summary["task_reason"]`` says why.
        text_column, label_column, image_column: table columns; defaults ``text`` / ``label`` / ``image``, the
            text and label columns auto-detected when unambiguous.
        label_sep: what joins several labels in one multi-label cell (JSONL/Parquet may hold lists instead).
        seed: seed of the stratified split for splits that are not given.
        val_fraction, test_fraction: the shares split off train when the data gives no val or test split; a test
            split too small to measure anything is left out (:func:`_test_measures`), and ``test_fraction`` 0 leaves
            it out always (``tune --test-fraction 0``: the user holds a test set of their own).

    Raises:
        UsageError: ``text_column`` and ``image_column`` together.
        DataError: anything that makes the data unusable, with the fix in the message.
    """
    path = Path(path).expanduser()
    if text_column and image_column:
        raise UsageError("--text-column and --image-column both given; a table has a text column (text tasks) or "
                         "an image-path column (image tasks): drop one of them")
    if not label_sep:
        raise UsageError("--label-sep is empty; pass the string that joins several labels in a cell (default '|')")
    modality, problem = _parse_task_option(task)
    from .segmentation import is_segmentation_folder, load_segmentation

    if problem == "segmentation" or (problem is None and is_segmentation_folder(path)):
        # masks, not label cells: the segmentation layouts have their own reader (data/segmentation.py)
        if test_fraction <= 0:  # its val split ranks trials and no small-data refit replaces a test score
            raise UsageError("--test-fraction 0 does not apply to segmentation, which always holds a test split out; "
                             "drop the option")
        if text_column:
            raise UsageError("--text-column does not apply to segmentation; a table has image and mask path columns")
        return load_segmentation(path, image_column=image_column, mask_column=label_column, seed=seed,
                                 val_fraction=val_fraction, test_fraction=test_fraction,
                                 **({"reason": f"--task {task}"} if problem else {}))
    kind = _data_kind(path)
    if kind == "folder":
        if modality == TEXT_MODALITY:
            raise DataError(f"{path}: --task {task} but this is an image folder; drop --task or pass matching data")
        if text_column or label_column or image_column:
            raise DataError("--text-column/--label-column/--image-column apply to tables only; drop them for an "
                            "image folder")
        if problem not in (None, "classification"):
            raise DataError(f"{path}: --task {task} but an image folder gives one class per image (its sub-folder); "
                            "for image multilabel or regression pass a table of image paths and labels "
                            "(--image-column)")
        raw, dropped, columns = _read_images(path)
        raw.update(kind="folder", problem="classification", reason=f"--task {task}" if problem else FOLDER_REASON,
                   parsed_classes=sorted(set(raw["labels"])))
        return _assemble(path, f"{IMAGE_MODALITY}-classification", raw, dropped, columns, seed, val_fraction,
                         test_fraction)
    files = {"train": path} if path.is_file() else _split_tables(path)
    tables: dict[Path, tuple[Any, dict[str, Any]]] = {}  # each table is read once
    modality = _table_modality(files["train"], modality, task, text_column, image_column, tables)
    raw, dropped, columns = _read_table_rows(path, files, modality, problem, task, text_column, image_column,
                                             label_column, label_sep, tables)
    return _assemble(path, f"{modality}-{raw['problem']}", raw, dropped, columns, seed, val_fraction,
                     test_fraction)


def _read(file: Path, tables: dict[Path, tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
    """``read_table(file)`` and its frame as read, once per file."""
    if file not in tables:
        frame: dict[str, Any] = {}
        tables[file] = (read_table(file, frame), frame)
    return tables[file]


def _table_modality(first: Path, modality: str | None, task: str, text_column: str | None,
                    image_column: str | None, tables: dict[Path, tuple[Any, dict[str, Any]]]) -> str:
    """Text or image for a table: an explicit --task or column flag decides; else an ``image`` column means image
    paths, and a table with both a ``text`` and an ``image`` column is ambiguous."""
    if modality == TEXT_MODALITY and image_column:
        raise UsageError(f"--task {task} with --image-column; a text task reads a text column (--text-column)")
    if modality == IMAGE_MODALITY and text_column:
        raise UsageError(f"--task {task} with --text-column; an image task reads an image-path column "
                         "(--image-column)")
    if modality == TEXT_MODALITY or (modality is None and text_column):
        return TEXT_MODALITY
    if image_column:
        return IMAGE_MODALITY
    cols = list(_read(first, tables)[0].columns)
    image, text = match_column(cols, "image"), match_column(cols, "text")
    if modality == IMAGE_MODALITY:
        if image is None:
            shown = ", ".join(cols[:12]) + (" ..." if len(cols) > 12 else "")
            raise DataError(f"{first}: --task {task} but this table has no 'image' column of image paths (columns: "
                            f"{shown}); pass --image-column, or a text task for a table of texts")
        return modality
    if image and text:
        raise DataError(f"{first}: has both a {text!r} and an {image!r} column; pass --text-column for a text task "
                        "or --image-column for an image task")
    return IMAGE_MODALITY if image else TEXT_MODALITY


def _label_cells(df: Any, raw: dict[str, Any], file: Path, column: str) -> list:
    """The raw label cells of ``column``: a CSV/TSV's strings, or a JSONL/Parquet file's own values (a list of
    labels, a number, None), which the task parses; a JSON object is no label and is refused."""
    frame = raw.get("frame")
    if frame is None:
        return [v.strip() for v in df[column].tolist()]
    cells = frame[frame.columns[list(df.columns).index(column)]].tolist()
    objects = [i for i, c in enumerate(cells) if isinstance(c, dict)]
    if objects:
        from automl_ft.tasks.base import format_rows

        raise DataError(f"{file}: column {column!r} holds objects or lists, not plain values (JSON objects in "
                        f"{format_rows(objects)}); make each label a string, a number or a list of strings")
    return cells


def _read_table_rows(path: Path, files: dict[str, Path], modality: str, problem: str | None, task: str,
                     text_column: str | None, image_column: str | None, label_column: str | None, label_sep: str,
                     tables: dict[Path, tuple[Any, dict[str, Any]]]
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Every table row with a non-empty input: its input (a text, or an image path resolved against the table's
    folder), its raw label cell and its split; the problem type (explicit or detected) and the parsed labels."""
    from automl_ft.tasks import detect_problem, get_task

    read: list[tuple[str, Path, list[str], list, str]] = []  # (split, file, inputs, label cells, label column)
    warnings: list[str] = []
    chosen: tuple[str, str] | None = None
    total = empty = 0
    for split, file in files.items():
        df, frame = _read(file, tables)
        sep = df.attrs.get("separator")
        if sep:
            expected = "\t" if table_format(file) == "tsv" else ","
            warnings.append(f"{file.name} is separated by {SEPARATORS[sep]}, not {SEPARATORS[expected]}; read it "
                            "that way")
        if modality == IMAGE_MODALITY:
            in_col, label_col = choose_image_columns(df, file, image_column, label_column)
        else:
            in_col, label_col = choose_columns(df, file, text_column, label_column)
        check_plain(df, file, in_col)
        chosen = chosen or (in_col, label_col)
        inputs = [str(v).strip() for v in df[in_col].tolist()]
        total += len(df)
        empty += sum(1 for x in inputs if not x)
        read.append((split, file, inputs, _label_cells(df, frame, file, label_col), label_col))
    assert chosen is not None
    input_word = "text" if modality == TEXT_MODALITY else "image path"
    if problem is None:
        cells = [c for _, _, inputs, labels, _ in read for x, c in zip(inputs, labels) if x]
        problem, reason = detect_problem(cells, label_sep)
    else:
        reason = f"--task {task}"
    cls = get_task(problem)
    rows: dict[str, list] = {"inputs": [], "labels": [], "splits": []}
    missing = 0
    parsed_classes: list[str] = []
    for split, file, inputs, cells, label_col in read:
        # Every row's cell, empty inputs included, so the rows an error names are the file's data rows.
        try:
            parsed = cls.parse_labels(cells, label_sep)
        except DataError as e:
            msg = str(e).removeprefix("label column: ")
            raise DataError(f"{file}: label column {label_col!r}: {msg}") from None
        where = f"{file.name}, " if len(read) > 1 else ""
        warnings += [f"{where}label column {label_col!r}: {w}" for w in parsed.warnings]
        dropped_at = set(parsed.missing)
        values = iter(parsed.labels)
        for i, x in enumerate(inputs):
            value = None if i in dropped_at else _label_value(next(values), parsed.classes)
            if not x:
                continue  # an empty input is counted as such, whatever its label
            if value is None:
                missing += 1
                continue
            if modality == IMAGE_MODALITY:  # relative paths resolve against the table's own folder
                x = str((file.parent / Path(x).expanduser()).resolve())
            rows["inputs"].append(x)
            rows["labels"].append(value)
            rows["splits"].append(split)
        if split == "train":
            parsed_classes = parsed.classes
    if not rows["inputs"]:
        raise DataError(f"{path}: every row has an empty {input_word} in column {chosen[0]!r} or an empty/NaN label "
                        f"in {chosen[1]!r}; pass the right --{input_word.split()[0]}-column/--label-column")
    bad = empty + missing
    if bad > MAX_BAD_FRACTION * total:
        raise DataError(f"{path}: {bad} of {total} rows have an empty {input_word} ({empty}) or an empty/NaN label "
                        f"({missing}) in columns {chosen[0]!r}/{chosen[1]!r}; fill or remove them, or pick other "
                        "columns")
    empty_key = "empty_text" if modality == TEXT_MODALITY else "empty_image_path"
    dropped: dict[str, Any] = {empty_key: empty, "missing_label": missing}
    raw = {"inputs": rows["inputs"], "labels": rows["labels"], "splits": rows["splits"], "warnings": warnings,
           "given_splits": sorted(files), "files": {k: str(v) for k, v in files.items()}, "problem": problem,
           "reason": reason, "parsed_classes": parsed_classes, "label_sep": label_sep}
    if modality == IMAGE_MODALITY:
        _check_table_images(path, raw, dropped)
    else:
        raw["keys"] = raw["inputs"]
    return raw, dropped, {modality: chosen[0], "label": chosen[1]}


def _label_value(label: Any, classes: list[str]) -> Any:
    """A parsed label as a value that does not depend on the file's class list: a class name, a tuple of class
    names (a label set) or a float (a number)."""
    if isinstance(label, (list, tuple)):
        return tuple(classes[int(i)] for i in label)
    if classes:
        return classes[int(label)]
    return float(label)


def _label_key(value: Any) -> str:
    """The string that dedupe and the fingerprint compare: a class name as itself (classification fingerprints
    are unchanged from before tasks), a label set as a sorted JSON list, a number as its shortest float repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return json.dumps(sorted(value), ensure_ascii=False)
    return repr(float(value))


def _check_table_images(path: Path, raw: dict[str, Any], dropped: dict[str, Any]) -> None:
    """Hash and decode-check the images a table names; missing and unreadable files are dropped and counted as
    in an image folder (more than :data:`MAX_BAD_FRACTION` is an error)."""
    paths = [Path(p) for p in raw["inputs"]]
    keys, reasons = check_images(paths)
    bad = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    if len(bad) > MAX_BAD_FRACTION * len(paths):
        first = "; ".join(f"{p.name}: {r}" for p, r in bad[:3])
        raise DataError(f"{path}: {len(bad)} of {len(paths)} images cannot be read ({first}); fix the paths in the "
                        "table (relative ones resolve against its folder) or remove those rows")
    ok = [i for i, r in enumerate(reasons) if r is None]
    if bad:
        shown = "; ".join(f"{p}: {r}" for p, r in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raw["warnings"].append(f"{len(bad)} missing or unreadable image(s) skipped ({shown})")
    for name in ("inputs", "labels", "splits"):
        raw[name] = [raw[name][i] for i in ok]
    raw["keys"] = [keys[i] for i in ok]
    dropped.update(unreadable_images=len(bad), unreadable_examples=[f"{p}: {r}" for p, r in bad[:20]])


def _read_images(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    require_folder(path)
    folders = split_folders(path) or {"train": path}
    paths: list[Path] = []
    labels: list[str] = []
    splits: list[str] = []
    loose = 0
    for split, folder in folders.items():
        p, y, n_loose = scan_class_folders(folder)
        paths += p
        labels += y
        splits += [split] * len(p)
        loose += n_loose
    if not paths:
        raise DataError(f"{path}: no images in class sub-folders; put each class's images in a folder named after "
                        "the class")
    keys, reasons = check_images(paths)
    bad = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    if len(bad) > MAX_BAD_FRACTION * len(paths):
        first = "; ".join(f"{p.name}: {r}" for p, r in bad[:3])
        raise DataError(f"{path}: {len(bad)} of {len(paths)} images cannot be read ({first}); remove or re-save them")
    ok = [i for i, r in enumerate(reasons) if r is None]
    warnings = []
    if bad:  # one line naming the files, whatever PIL said about them (a decompression bomb, a truncated file)
        shown = "; ".join(f"{p}: {r}" for p, r in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        warnings.append(f"{len(bad)} unreadable image(s) skipped ({shown})")
    raw = {"inputs": [str(paths[i].resolve()) for i in ok], "keys": [keys[i] for i in ok],
           "labels": [labels[i] for i in ok], "splits": [splits[i] for i in ok], "given_splits": sorted(folders),
           "files": {k: str(v) for k, v in folders.items()}, "warnings": warnings}
    dropped = {"unreadable_images": len(bad), "unreadable_examples": [f"{p}: {r}" for p, r in bad[:20]],
               "loose_images_ignored": loose}
    return raw, dropped, {}


def _encode(value: Any, index: dict[str, int]) -> Any:
    """A label value as :class:`Split` holds it: a class index, sorted class indices, or the float itself."""
    if isinstance(value, str):
        return index[value]
    if isinstance(value, tuple):
        return sorted(index[v] for v in value)
    return float(value)


def _names(value: Any) -> tuple[str, ...]:
    """The class names a label value carries (none for a number)."""
    return (value,) if isinstance(value, str) else value if isinstance(value, tuple) else ()


def _assemble(path: Path, task: str, raw: dict[str, Any], dropped: dict[str, Any], columns: dict[str, str],
              seed: int, val_fraction: float, test_fraction: float) -> LabeledData:
    from automl_ft.tasks import get_task

    problem = raw["problem"]
    cls = get_task(problem)
    splits_given = raw["given_splits"]
    warnings = list(raw.get("warnings", []))
    collisions = case_collisions(sorted({n for v in raw["labels"] for n in _names(v)}))
    if collisions:  # two classes to the model, and neither gets the other's examples
        shown = ", ".join("/".join(repr(y) for y in g) for g in collisions[:5]) + (" ..." if len(collisions) > 5
                                                                                   else "")
        what = "class folders" if raw.get("kind") == "folder" else "labels"
        warnings.append(f"{len(collisions)} group(s) of {what} differ only in case ({shown}) and are trained as "
                        "separate classes; rename them to one spelling if they are the same class")
    label_keys = [_label_key(v) for v in raw["labels"]]
    keep, dup = dedupe(raw["keys"], label_keys, raw["splits"])
    dropped.update(dup)
    inputs = [raw["inputs"][i] for i in keep]
    keys = [raw["keys"][i] for i in keep]
    values = [raw["labels"][i] for i in keep]
    label_keys = [label_keys[i] for i in keep]
    splits = [raw["splits"][i] for i in keep]

    train_names = {n for v, s in zip(values, splits) if s == "train" for n in _names(v)}
    for name in ("val", "test"):
        unseen = sorted({n for v, s in zip(values, splits) if s == name for n in _names(v)} - train_names)
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5])
            raise DataError(f"{path}: labels in the {name} split are absent from train ({shown}); add training "
                            f"examples for them or remove them from {name}")
    # The task's class order (sorted names), restricted to what train holds after cleaning.
    classes = [c for c in raw["parsed_classes"] if c in train_names]
    _check_enough(path, problem, classes, [v for v, s in zip(values, splits) if s == "train"])
    index = {c: i for i, c in enumerate(classes)}
    y_all = [_encode(v, index) for v in values]

    parts: dict[str, list[int]] = {s: [i for i, sp in enumerate(splits) if sp == s] for s in SPLITS}
    split_note = f"given ({', '.join(splits_given)})"
    missing = [s for s in ("val", "test") if not parts[s]]
    no_test = "test" in missing and not _test_measures(problem, [y_all[i] for i in parts["train"]], test_fraction)
    if no_test:  # 16 labelled emails gave a 2-example test split scoring 50 %: cross-validation reports instead
        missing.remove("test")
        warnings.append("no test split (--test-fraction 0): every labelled example trains or validates; the model "
                        "card reports the cross-validated or validation estimate" if test_fraction <= 0 else
                        f"no test split: {test_fraction:.0%} of {len(parts['train'])} examples would hold less than "
                        "one per class on average; the model card reports the cross-validated estimate instead")
    if missing:
        train_idx = parts["train"]
        fr = {"val": val_fraction, "test": test_fraction}
        want = [fr[s] for s in missing]
        strata = cls.strata([y_all[i] for i in train_idx])
        how = "iterative stratification" if getattr(strata, "ndim", 1) == 2 else "stratified"
        pieces = split_strata(strata, [1.0 - sum(want), *want], seed)
        parts["train"] = [train_idx[j] for j in pieces[0]]
        for s, piece in zip(missing, pieces[1:]):
            parts[s] = [train_idx[j] for j in piece]
        split_note += f"; {' and '.join(missing)} split off train: {how}, seed {seed}, " + \
            ", ".join(f"{s} {fr[s]:.0%}" for s in missing)
    for s in SPLITS:
        if not parts[s] and not (s == "test" and no_test):
            if problem == "classification":
                per_class = Counter(y_all).most_common()[-1][1]
                raise DataError(f"{path}: too few examples to make a {s} split (smallest class has {per_class}); "
                                "give at least 3 examples per class, or provide the split")
            raise DataError(f"{path}: too few examples to make a {s} split ({len(inputs)} after cleaning); give "
                            "more examples, or provide the split")

    def make(idx: list[int]) -> Split:
        return Split([inputs[i] for i in idx], [y_all[i] for i in idx])

    train, val, test = make(parts["train"]), make(parts["val"]), make(parts["test"])
    digest = hashlib.sha1(task.encode())
    for name, idx in parts.items():
        digest.update(name.encode())
        for i in idx:
            digest.update(keys[i].encode())
            digest.update(b"\x00" + label_keys[i].encode() + b"\x01")
    n_classes = len(classes)
    summary: dict[str, Any] = {
        "source": str(path.resolve()),
        "task": task,
        "task_reason": raw["reason"],
        "columns": columns,
        "num_classes": n_classes,
        "classes": classes,
        "examples_read": len(raw["inputs"]) + sum(v for k, v in dropped.items() if k in (
            "unreadable_images", "empty_text", "empty_image_path", "missing_label")),
        "examples_kept": len(inputs),
        "dropped": dropped,
        "split": split_note,
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
    }
    if "label_sep" in raw and problem == "multilabel":
        summary["label_sep"] = raw["label_sep"]
    # The task's label statistics per split: class_counts (classification, the format since the first version),
    # label_counts / label_set_sizes / no_label (multilabel), target (regression).
    summary.update(cls.fit(classes, train.labels).summary({"train": train.labels, "val": val.labels,
                                                           "test": test.labels}))
    unmeasured = [c for c, a, b in zip(classes, val.counts(n_classes), test.counts(n_classes))
                  if not a or (len(test) and not b)]
    if unmeasured:  # too rare to reach every split: trained on, but early stopping and the test cannot see them
        warnings.append(f"{len(unmeasured)} class(es) missing from val or test, too few examples to split "
                        f"({', '.join(repr(c) for c in unmeasured[:5])}): their accuracy is not measured; "
                        "add examples or give the splits")
    if warnings:
        summary["warnings"] = warnings
    return LabeledData(task, classes, train, val, test, str(path.resolve()), summary, digest.hexdigest()[:16])


def _test_measures(problem: str, labels: list, fraction: float) -> bool:
    """Whether a ``fraction`` test split of ``labels`` measures anything: one example per class on average
    (classification; 16 emails of 2 classes would test on 1.6), 5 examples otherwise. Below that it is left out."""
    if problem == "classification":
        return fraction * len(labels) >= len(Counter(labels))
    return fraction * len(labels) >= 5.0


def _check_enough(path: Path, problem: str, classes: list[str], train_values: list) -> None:
    """Enough label variety in train to learn anything: two classes for a classifier, one label for a multi-label
    model, two distinct values for a regression."""
    if problem == "classification" and len(classes) < 2:
        only = f" ({classes[0]!r})" if classes else ""
        raise DataError(f"{path}: only {len(classes)} class{only} after cleaning; a classifier needs at least two "
                        "labels")
    if problem == "multilabel" and not classes:
        raise DataError(f"{path}: no labels in train after cleaning (every label set is empty); a multi-label "
                        "model needs at least one label")
    if problem == "regression" and len(set(train_values)) < 2:
        raise DataError(f"{path}: the target is constant in train after cleaning ({len(train_values)} rows); a "
                        "regression needs at least two distinct values")
