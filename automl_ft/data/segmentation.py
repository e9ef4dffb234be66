"""Segmentation data: images with one mask each, as ``images/`` + ``masks/`` folders or a table of paths.

Layouts:

- a folder with ``images/`` and ``masks/`` sub-folders whose files pair up by stem (``images/a.jpg`` with
  ``masks/a.png``), optionally ``classes.json`` beside them;
- a table (CSV/TSV/JSONL/Parquet) with an ``image`` and a ``mask`` column of paths (relative paths resolve against
  the table's folder), with ``--task image-segmentation``; ``classes.json`` beside the table is read too.

A mask is a single-channel PNG of class indices or a palette PNG (its pixel values are the indices); 255 is the
ignore index. ``classes.json`` names the indices: a list (index = position) or an object ``{"0": "road", ...}``.
Without it the classes are ``"0"``..``"K"`` for the largest index K seen.

Cleaning (every count lands in the summary's ``dropped``, with the first files named): images without a mask,
masks without an image, unreadable images or masks (a colour image is no mask), a mask whose size differs from its
image, a mask with indices that classes.json does not name, exact duplicate images (the same image with another
mask: both dropped). Splits are seeded random (``val``/``test`` fractions of the examples).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from automl_ft.errors import DataError

from .cleaning import dedupe
from .images import check_images, is_image, list_images
from .split import split_strata
from .types import LabeledData, Split

TASK = "image-segmentation"
CLASSES_FILE = "classes.json"
IGNORE_INDEX = 255
MAX_BAD_FRACTION = 0.05
SHOWN = 3  # files named per problem in a warning


def is_segmentation_folder(path: Path) -> bool:
    """True for a folder holding ``images/`` and ``masks/`` sub-folders (what ``--task auto`` recognises)."""
    return path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir()


def _names(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (" ..." if len(items) > SHOWN else "")


def read_classes(file: Path) -> list[str] | None:
    """The class names of ``classes.json`` in index order, or None when there is no such file.

    Raises:
        DataError: not JSON, or neither a list of names nor an object of index -> name covering 0..K.
    """
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: not valid JSON ({str(e).splitlines()[0][:100]}); write a list of class names "
                        "in index order") from None
    if isinstance(raw, dict):
        try:
            index = {int(k): str(v) for k, v in raw.items()}
        except ValueError:
            raise DataError(f"{file}: keys must be class indices (\"0\", \"1\", ...); got {sorted(raw)[:3]}") from None
        if sorted(index) != list(range(len(index))):
            raise DataError(f"{file}: indices must run 0..{len(index) - 1} without gaps; got {sorted(index)[:10]}")
        raw = [index[i] for i in range(len(index))]
    if not isinstance(raw, list) or not all(isinstance(c, (str, int)) for c in raw):
        raise DataError(f"{file}: expected a list of class names in index order, or an object {{\"0\": name}}")
    names = [str(c) for c in raw]
    if len(set(names)) != len(names) or len(names) < 2 or len(names) > IGNORE_INDEX:
        raise DataError(f"{file}: needs 2 to {IGNORE_INDEX} distinct class names, got {len(names)} "
                        f"({len(set(names))} distinct)")
    return names


def _pair_folder(root: Path) -> tuple[list[Path], list[Path], dict[str, Any], list[str]]:
    """Images and masks paired by stem; the unpaired ones counted and named."""
    images = list_images(root / "images")
    masks = list_images(root / "masks")
    by_stem: dict[str, list[Path]] = {}
    for m in masks:
        by_stem.setdefault(str(m.relative_to(root / "masks").with_suffix("")), []).append(m)
    img_stems = {str(p.relative_to(root / "images").with_suffix("")) for p in images}
    pairs_i, pairs_m, no_mask, two_masks = [], [], [], []
    for p in images:
        stem = str(p.relative_to(root / "images").with_suffix(""))
        found = by_stem.get(stem, [])
        if not found:
            no_mask.append(p.name)
        elif len(found) > 1:
            two_masks.append(stem)
        else:
            pairs_i.append(p)
            pairs_m.append(found[0])
    orphans = sorted(m.name for s, ms in by_stem.items() if s not in img_stems for m in ms)
    warnings = []
    if no_mask:
        warnings.append(f"{len(no_mask)} image(s) without a mask in masks/ skipped ({_names(no_mask)})")
    if two_masks:
        warnings.append(f"{len(two_masks)} image(s) with several masks of the same stem skipped "
                        f"({_names(two_masks)}); keep one mask per image")
    if orphans:
        warnings.append(f"{len(orphans)} mask(s) without an image in images/ ignored ({_names(orphans)})")
    dropped = {"missing_mask": len(no_mask), "ambiguous_mask": len(two_masks), "orphan_masks": len(orphans)}
    if not pairs_i:
        raise DataError(f"{root}: no image in images/ has a mask of the same stem in masks/ "
                        f"({len(images)} images, {len(masks)} masks); name each mask after its image "
                        "(images/a.jpg -> masks/a.png)")
    return pairs_i, pairs_m, dropped, warnings


def _pair_table(file: Path, image_column: str | None, mask_column: str | None
                ) -> tuple[list[Path], list[Path], dict[str, Any], list[str], dict[str, str]]:
    from .tables import match_column, read_table

    df = read_table(file)
    cols = list(df.columns)
    image = image_column if image_column in cols else match_column(cols, image_column or "image")
    mask = mask_column if mask_column in cols else match_column(cols, mask_column or "mask")
    if image is None or mask is None:
        shown = ", ".join(cols[:12])
        raise DataError(f"{file}: a segmentation table needs an image-path and a mask-path column (columns: "
                        f"{shown}); name them 'image' and 'mask' or pass --image-column/--label-column")
    images, masks, empty = [], [], []
    for i, (x, m) in enumerate(zip(df[image].tolist(), df[mask].tolist())):
        x, m = str(x).strip(), str(m).strip()
        if not x or not m:
            empty.append(f"row {i + 1}")
            continue
        images.append((file.parent / Path(x).expanduser()).resolve())
        masks.append((file.parent / Path(m).expanduser()).resolve())
    warnings = [f"{len(empty)} row(s) with an empty image or mask path skipped ({_names(empty)})"] if empty else []
    return images, masks, {"missing_mask": len(empty)}, warnings, {"image": image, "mask": mask}


def _check_masks(images: list[Path], masks: list[Path], known: int | None
                 ) -> tuple[list[str | None], list[int], dict[str, list[str]]]:
    """Per pair: the mask's hash (or None when dropped), the largest index each mask holds, and the problems."""
    from PIL import Image

    from automl_ft.preprocess import load_mask

    problems: dict[str, list[str]] = {"unreadable_masks": [], "size_mismatch": [], "unknown_indices": []}
    hashes: list[str | None] = []
    largest: list[int] = []
    for img, path in zip(images, masks):
        try:
            arr = load_mask(path)
            with Image.open(img) as im:
                size = im.size
        except FileNotFoundError as e:
            problems["unreadable_masks"].append(f"{Path(e.filename or path).name}: no such file")
            hashes.append(None)
            largest.append(-1)
            continue
        except Exception as e:  # noqa: BLE001  (PIL raises a zoo of errors on corrupt data; the pair is dropped, named)
            problems["unreadable_masks"].append(f"{path.name}: {(str(e).splitlines() or [type(e).__name__])[0][:80]}")
            hashes.append(None)
            largest.append(-1)
            continue
        if (arr.shape[1], arr.shape[0]) != size:
            problems["size_mismatch"].append(f"{path.name} {arr.shape[1]}x{arr.shape[0]} vs image {size[0]}x{size[1]}")
            hashes.append(None)
            largest.append(-1)
            continue
        values = arr[arr != IGNORE_INDEX]
        top = int(values.max()) if values.size else 0
        if known is not None and top >= known:
            import numpy as np

            bad = sorted(int(v) for v in np.unique(values[values >= known]))
            problems["unknown_indices"].append(f"{path.name}: {bad[:5]}")
            hashes.append(None)
            largest.append(-1)
            continue
        hashes.append(hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest())
        largest.append(top)
    return hashes, largest, problems


def load_segmentation(path: Path, *, image_column: str | None = None, mask_column: str | None = None,
                      seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
                      reason: str = "an images/ + masks/ folder: one class-index mask per image") -> LabeledData:
    """Read, clean and split segmentation data (see the module docstring); ``Split.labels`` are mask paths.

    Raises:
        DataError: no pairs, too many broken pairs (over 5 %), fewer than 2 classes, or too few pairs to split.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass a folder with images/ and masks/ or a table of "
                        "image and mask paths")
    if path.is_dir():
        if not is_segmentation_folder(path):
            raise DataError(f"{path}: a segmentation folder needs images/ and masks/ sub-folders with matching "
                            "file names")
        images, masks, dropped, warnings = _pair_folder(path)
        columns: dict[str, str] = {}
        classes_file = path / CLASSES_FILE
    else:
        if is_image(path):
            raise DataError(f"{path}: a single image; pass a folder with images/ and masks/")
        images, masks, dropped, warnings, columns = _pair_table(path, image_column, mask_column)
        classes_file = path.parent / CLASSES_FILE
    named = read_classes(classes_file)
    missing_files = [f"{p.name}" for p in images + masks if not p.is_file()]
    keys, reasons = check_images(images)
    hashes, largest, problems = _check_masks(images, masks, len(named) if named is not None else None)
    unreadable = [f"{p.name}: {r}" for p, r in zip(images, reasons) if r is not None]
    ok = [i for i in range(len(images)) if reasons[i] is None and hashes[i] is not None]
    bad = len(images) - len(ok)
    if bad > MAX_BAD_FRACTION * len(images):
        first = "; ".join((unreadable + [x for v in problems.values() for x in v])[:3])
        raise DataError(f"{path}: {bad} of {len(images)} image/mask pairs cannot be used ({first}); fix or remove "
                        "them")
    what = {"unreadable_masks": "unreadable mask(s) (colour images, or not images)",
            "size_mismatch": "mask(s) of another size than their image",
            "unknown_indices": f"mask(s) with indices that {CLASSES_FILE} does not name"}
    for key, items in problems.items():
        dropped[key] = len(items)
        if items:
            dropped[f"{key}_examples"] = items[:20]
            warnings.append(f"{len(items)} {what[key]} skipped ({_names(items)})")
    dropped["unreadable_images"] = len(unreadable)
    if unreadable:
        warnings.append(f"{len(unreadable)} unreadable image(s) skipped ({_names(unreadable)})")
    del missing_files  # missing files surface as unreadable above, with the reason
    keep, dup = dedupe([keys[i] for i in ok], [hashes[i] for i in ok])
    dropped.update(dup)
    ok = [ok[j] for j in keep]
    top = max(largest[i] for i in ok)
    classes = named if named is not None else [str(i) for i in range(top + 1)]
    if len(classes) < 2:
        raise DataError(f"{path}: every mask holds only class 0 (and ignored pixels); segmentation needs at least "
                        f"two classes, or a {CLASSES_FILE} naming them")
    pieces = split_strata([0] * len(ok), [1.0 - val_fraction - test_fraction, val_fraction, test_fraction], seed)
    if any(not p for p in pieces):
        raise DataError(f"{path}: too few image/mask pairs to make train, val and test splits ({len(ok)} after "
                        "cleaning); give at least 3")
    inputs = [str(images[i].resolve()) for i in ok]
    labels = [str(masks[i].resolve()) for i in ok]
    splits = [Split([inputs[j] for j in p], [labels[j] for j in p]) for p in pieces]
    digest = hashlib.sha1(TASK.encode())
    for name, piece in zip(("train", "val", "test"), pieces):
        digest.update(name.encode())
        for j in piece:
            digest.update(keys[ok[j]].encode() + b"\x00" + hashes[ok[j]].encode() + b"\x01")
    from automl_ft.tasks import get_task

    train, val, test = splits
    summary: dict[str, Any] = {
        "source": str(path.resolve()), "task": TASK, "task_reason": reason, "columns": columns,
        "num_classes": len(classes), "classes": classes,
        "classes_from": str(classes_file) if named is not None else "the indices seen in the masks",
        "ignore_index": IGNORE_INDEX, "examples_read": len(images) + dropped.get("missing_mask", 0),
        "examples_kept": len(ok), "dropped": dropped,
        "split": f"random, seed {seed}, val {val_fraction:.0%}, test {test_fraction:.0%}",
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
    }
    summary.update(get_task("segmentation").fit(classes, train.labels).summary(
        {"train": train.labels, "val": val.labels, "test": test.labels}))
    if warnings:
        summary["warnings"] = warnings
    return LabeledData(TASK, classes, train, val, test, str(path.resolve()), summary, digest.hexdigest()[:16])
