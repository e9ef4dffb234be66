"""Image folders: one sub-folder per class, optionally under ``train/``, ``val/`` and ``test/``."""

from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from automl_ft.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Every image under ``folder``, recursively, in a stable order; hidden files and folders are skipped."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file() and is_image(p):
            out.append(p)
    return sorted(out)


def split_folders(root: Path) -> dict[str, Path]:
    """``{"train": ..., "val": ..., "test": ...}`` for the split sub-folders present, or ``{}`` if there is no
    ``train`` folder (then every sub-folder is a class)."""
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in SPLIT_ALIASES:
            found.setdefault(SPLIT_ALIASES[child.name.lower()], child)
    return found if "train" in found else {}


def scan_class_folders(root: Path) -> tuple[list[Path], list[str], int]:
    """Images and their class names (the first folder level under ``root``), and how many images sit loose in root."""
    paths: list[Path] = []
    labels: list[str] = []
    loose = 0
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            imgs = list_images(child)
            paths.extend(imgs)
            labels.extend([child.name] * len(imgs))
        elif child.is_file() and is_image(child):
            loose += 1
    return paths, labels, loose


def _check_image(path: Path) -> tuple[str | None, str | None]:
    """(sha1 of the bytes, None) for a readable image, (None, reason) otherwise."""
    from PIL import Image, UnidentifiedImageError

    bombs = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        data = path.read_bytes()
        if not data:
            return None, "empty file"
        digest = hashlib.sha1(data).hexdigest()
        with Image.open(path) as im:
            im.verify()  # checks structure and (for PNG) checksums without decoding every pixel
        with Image.open(path) as im:
            if im.width < 1 or im.height < 1:
                return None, "zero-size image"
            im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; enough to prove the data decodes
            im.load()
        return digest, None
    except bombs as e:  # PIL's message: "Image size (N pixels) exceeds limit of M pixels, could be ..."
        return None, f"decompression bomb, skipped ({str(e).split(', could')[0]})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return None, (str(e).splitlines()[0] if str(e) else type(e).__name__)[:120]
    except Exception as e:  # PIL raises a zoo of errors on corrupt data; none of them may crash the run
        return None, f"{type(e).__name__}: {str(e)[:100]}"


def check_images(paths: list[Path]) -> tuple[list[str | None], list[str | None]]:
    """Hash and decode-check every image (threads: reading and zlib release the GIL).

    An image over PIL's ``MAX_IMAGE_PIXELS`` (89 M pixels) only *warns* when opened and then decodes in full
    (hundreds of MB per image, again at every epoch); the warning is made an error here so such an image is
    skipped like any unreadable one. The filter is process-wide (Python 3.11's warnings state is not per
    thread), so it is set once around the whole pool rather than inside each worker.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(_check_image, paths, chunksize=64))
    return [r[0] for r in results], [r[1] for r in results]


def require_folder(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: no such file or folder; pass an image folder or a CSV/TSV/JSONL/Parquet file")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
