"""The embedded default data set: scikit-learn's bundled handwritten digits, written as an image folder.

It ships inside scikit-learn (no download), so ``automl-ft tune`` without DATA runs on any fresh machine.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

DEMO_NAME = "sklearn-digits"
MARKER = ".complete"


def is_demo_folder(folder: Path) -> bool:
    """A complete demo data folder written by :func:`write_digits` (and nothing a user made)."""
    return (folder / MARKER).is_file()


def write_digits(folder: Path) -> Path:
    """1,797 8x8 grayscale digits (10 classes) as PNGs under ``folder/<digit>/``; idempotent.

    Written into a temporary sibling and renamed into place, so an interrupted write never leaves a half data set
    that a later run would take for the demo.
    """
    if is_demo_folder(folder):
        return folder
    if folder.exists():  # never replaced: it may be someone's (or a half write of an older version)
        from automl_ft.errors import UsageError

        raise UsageError(f"{folder} exists but is not a complete demo data set; move it away and run again")
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for i, (img, label) in enumerate(zip(digits.images, digits.target)):
            d = tmp / str(int(label))
            d.mkdir(exist_ok=True)
            pixels = (np.asarray(img) * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").convert("RGB").save(d / f"{i:04d}.png")
        (tmp / MARKER).write_text("scikit-learn load_digits\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
