"""``load_dataset``: from a path to a cleaned, split :class:`LabeledData` with a summary of what was done."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from automl_ft.errors import DataError

from .cleaning import case_collisions, dedupe, is_missing_label, numeric_target
from .images import check_images, is_image, list_images, require_folder, scan_class_folders, split_folders
from .split import stratified_split
from .tables import SEPARATORS, check_plain, choose_columns, read_table, table_format
from .types import IMAGE, TASKS, TEXT, LabeledData, Split

# More unreadable images or empty rows than this is a broken data set, not noise to drop quietly.
MAX_BAD_FRACTION = 0.05


def detect_task(path: Path) -> str:
    """``image-classification`` for an image folder, ``text-classification`` for a table or a folder of tables."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass an image folder or a CSV/TSV/JSONL/Parquet file")
    if path.is_file():
        if table_format(path):
            return TEXT
        if is_image(path):
            raise DataError(f"{path}: a single image; pass a folder with one sub-folder of images per class")
        raise DataError(f"{path}: unknown file type {path.suffix or '(none)'!r}; use an image folder or a "
                        ".csv/.tsv/.jsonl/.parquet file")
    if _split_tables(path):
        return TEXT
    if any(True for _ in list_images(path)[:1]):
        return IMAGE
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


def load_dataset(path: str | Path, *, task: str = "auto", text_column: str | None = None,
                 label_column: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1) -> LabeledData:
    """Read, clean and split labeled data.

    Args:
        path: an image folder (class sub-folders, optionally under train/val/test), a table file, or a folder
            holding train/val/test tables.
        task: ``auto``, ``image-classification`` or ``text-classification``.
        text_column, label_column: table columns; defaults ``text`` / ``label``, auto-detected when unambiguous.
        seed: seed of the stratified split for splits that are not given.

    Raises:
        DataError: anything that makes the data unusable, with the fix in the message.
    """
    path = Path(path).expanduser()
    detected = detect_task(path)
    if task not in ("auto", *TASKS):
        raise DataError(f"unknown task {task!r}; use auto, {', '.join(TASKS)}")
    if task != "auto" and task != detected:
        kind = "an image folder" if detected == IMAGE else "a table of text"
        raise DataError(f"{path}: --task {task} but this is {kind}; drop --task or pass matching data")
    if detected == TEXT:
        raw, dropped, columns = _read_text(path, text_column, label_column)
    else:
        if text_column or label_column:
            raise DataError("--text-column/--label-column apply to tables only; drop them for an image folder")
        raw, dropped, columns = _read_images(path)
    return _assemble(path, detected, raw, dropped, columns, seed, val_fraction, test_fraction)


def _read_text(path: Path, text_column: str | None, label_column: str | None
               ) -> tuple[dict[str, list], dict[str, Any], dict[str, str]]:
    files = {"train": path} if path.is_file() else _split_tables(path)
    inputs: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    empty = missing_label = total = 0
    chosen: tuple[str, str] | None = None
    warnings: list[str] = []
    for split, file in files.items():
        df = read_table(file)
        sep = df.attrs.get("separator")
        if sep:
            expected = "\t" if table_format(file) == "tsv" else ","
            warnings.append(f"{file.name} is separated by {SEPARATORS[sep]}, not {SEPARATORS[expected]}; read it "
                            "that way")
        text_col, label_col = choose_columns(df, file, text_column, label_column)
        check_plain(df, file, text_col, label_col)
        chosen = chosen or (text_col, label_col)
        total += len(df)
        for text, label in zip(df[text_col].tolist(), df[label_col].tolist()):
            text, label = str(text).strip(), str(label).strip()
            if not text:
                empty += 1
                continue
            if is_missing_label(label):  # "nan" is a missing float, not a class
                missing_label += 1
                continue
            inputs.append(text)
            labels.append(label)
            splits.append(split)
    assert chosen is not None
    if not inputs:
        raise DataError(f"{path}: every row has an empty text in column {chosen[0]!r} or an empty/NaN label in "
                        f"{chosen[1]!r}; pass the right --text-column/--label-column")
    bad = empty + missing_label
    if bad > MAX_BAD_FRACTION * total:
        raise DataError(f"{path}: {bad} of {total} rows have an empty text ({empty}) or an empty/NaN label "
                        f"({missing_label}) in columns {chosen[0]!r}/{chosen[1]!r}; fill or remove them, or pick other "
                        "columns")
    if missing_label:
        warnings.append(f"{missing_label} row(s) with an empty or NaN label in column {chosen[1]!r} dropped as "
                        "missing")
    distinct = numeric_target(labels)
    if distinct:
        warnings.append(f"label column {chosen[1]!r} looks like a numeric target ({distinct} distinct values); "
                        f"automl-ft classifies it as {distinct} classes, regression is not supported yet")
    raw = {"inputs": inputs, "keys": inputs, "labels": labels, "splits": splits, "warnings": warnings,
           "given_splits": sorted(files), "files": {k: str(v) for k, v in files.items()}}
    return raw, {"empty_text": empty, "missing_label": missing_label}, {"text": chosen[0], "label": chosen[1]}


def _read_images(path: Path) -> tuple[dict[str, list], dict[str, Any], dict[str, str]]:
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


def _assemble(path: Path, task: str, raw: dict[str, Any], dropped: dict[str, Any], columns: dict[str, str],
              seed: int, val_fraction: float, test_fraction: float) -> LabeledData:
    splits_given = raw["given_splits"]
    warnings = list(raw.get("warnings", []))
    collisions = case_collisions(raw["labels"])
    if collisions:  # two classes to the model, and neither gets the other's examples
        shown = ", ".join("/".join(repr(y) for y in g) for g in collisions[:5]) + (" ..." if len(collisions) > 5
                                                                                   else "")
        what = "labels" if task == TEXT else "class folders"
        warnings.append(f"{len(collisions)} group(s) of {what} differ only in case ({shown}) and are trained as "
                        "separate classes; rename them to one spelling if they are the same class")
    keep, dup = dedupe(raw["keys"], raw["labels"], raw["splits"])
    dropped.update(dup)
    inputs = [raw["inputs"][i] for i in keep]
    keys = [raw["keys"][i] for i in keep]
    labels = [raw["labels"][i] for i in keep]
    splits = [raw["splits"][i] for i in keep]

    train_labels = {y for y, s in zip(labels, splits) if s == "train"}
    for name in ("val", "test"):
        unseen = sorted({y for y, s in zip(labels, splits) if s == name} - train_labels)
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5])
            raise DataError(f"{path}: labels in the {name} split are absent from train ({shown}); add training "
                            f"examples for them or remove them from {name}")
    classes = sorted(train_labels)
    if len(classes) < 2:
        only = f" ({classes[0]!r})" if classes else ""
        raise DataError(f"{path}: only {len(classes)} class{only} after cleaning; a classifier needs at least two "
                        "labels")
    index = {c: i for i, c in enumerate(classes)}
    y_all = [index[y] for y in labels]

    parts: dict[str, list[int]] = {s: [i for i, sp in enumerate(splits) if sp == s] for s in ("train", "val", "test")}
    split_note = f"given ({', '.join(splits_given)})"
    missing = [s for s in ("val", "test") if not parts[s]]
    if missing:
        train_idx = parts["train"]
        fr = {"val": val_fraction, "test": test_fraction}
        want = [fr[s] for s in missing]
        pieces = stratified_split([y_all[i] for i in train_idx], [1.0 - sum(want), *want], seed)
        parts["train"] = [train_idx[j] for j in pieces[0]]
        for s, piece in zip(missing, pieces[1:]):
            parts[s] = [train_idx[j] for j in piece]
        split_note += f"; {' and '.join(missing)} split off train: stratified, seed {seed}, " + \
            ", ".join(f"{s} {fr[s]:.0%}" for s in missing)
    for s in ("train", "val", "test"):
        if not parts[s]:
            per_class = Counter(y_all).most_common()[-1][1]
            raise DataError(f"{path}: too few examples to make a {s} split (smallest class has {per_class}); "
                            "give at least 3 examples per class, or provide the split")

    def make(idx: list[int]) -> Split:
        return Split([inputs[i] for i in idx], [y_all[i] for i in idx])

    train, val, test = make(parts["train"]), make(parts["val"]), make(parts["test"])
    digest = hashlib.sha1(task.encode())
    for name, idx in parts.items():
        digest.update(name.encode())
        for i in idx:
            digest.update(keys[i].encode())
            digest.update(b"\x00" + labels[i].encode() + b"\x01")
    n_classes = len(classes)
    summary: dict[str, Any] = {
        "source": str(path.resolve()),
        "task": task,
        "columns": columns,
        "num_classes": n_classes,
        "classes": classes,
        "examples_read": len(raw["inputs"]) + sum(v for k, v in dropped.items()
                                                  if k in ("unreadable_images", "empty_text", "missing_label")),
        "examples_kept": len(inputs),
        "dropped": dropped,
        "split": split_note,
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "class_counts": {c: {"train": a, "val": b, "test": t} for c, a, b, t in
                         zip(classes, train.counts(n_classes), val.counts(n_classes), test.counts(n_classes))},
    }
    unmeasured = [c for c, n in summary["class_counts"].items() if not n["val"] or not n["test"]]
    if unmeasured:  # too rare to reach every split: trained on, but early stopping and the test cannot see them
        warnings.append(f"{len(unmeasured)} class(es) missing from val or test, too few examples to split "
                        f"({', '.join(repr(c) for c in unmeasured[:5])}): their accuracy is not measured; "
                        "add examples or give the splits")
    if warnings:
        summary["warnings"] = warnings
    return LabeledData(task, classes, train, val, test, str(path.resolve()), summary, digest.hexdigest()[:16])
