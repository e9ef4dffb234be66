"""The embedded default data set: scikit-learn's bundled handwritten digits, written as an image folder.

It ships inside scikit-learn (no download), so ``automl-ft tune`` without DATA runs on any fresh machine.
"""

from __future__ import annotations

from pathlib import Path

DEMO_NAME = "sklearn-digits"


def write_digits(folder: Path) -> Path:
    """1,797 8x8 grayscale digits (10 classes) as PNGs under ``folder/<digit>/``; idempotent."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        d = folder / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        pixels = (np.asarray(img) * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").convert("RGB").save(d / f"{i:04d}.png")
    marker.write_text("scikit-learn load_digits\n")
    return folder
