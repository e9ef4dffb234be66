"""A real-image segmentation data set built offline: handwritten digits pasted onto real photographs.

Backgrounds are random crops of scikit-learn's bundled sample photographs (``china.jpg``, ``flower.jpg``); objects
are scikit-learn's bundled handwritten digits (UCI optdigits, 8 x 8, upscaled) whose silhouettes (ink above a
threshold) are the masks. Classes: 0 background, 1 a handwritten "0", 2 a handwritten "1". A pixel at the soft
edge of a stroke (ink between the two thresholds) is marked 255, the ignore index, as VOC marks object borders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ["background", "zero", "one"]


def _backgrounds() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]


def make_image_and_mask(rng: np.random.Generator, size: int, backgrounds: list[np.ndarray], digits: np.ndarray,
                        targets: np.ndarray, objects: int = 2) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    y0, x0 = int(rng.integers(bg.shape[0] - size)), int(rng.integers(bg.shape[1] - size))
    image = bg[y0:y0 + size, x0:x0 + size].astype(np.float32).copy()
    mask = np.zeros((size, size), dtype=np.uint8)
    pool = np.flatnonzero(targets <= 1)
    for _ in range(objects):
        k = int(rng.choice(pool))
        side = int(rng.integers(size // 3, size // 2 + 1))
        ink = np.asarray(Image.fromarray((digits[k] * 255 / 16).astype(np.uint8)).resize((side, side),
                                                                                          Image.Resampling.BILINEAR),
                         dtype=np.float32) / 255
        top, left = int(rng.integers(size - side)), int(rng.integers(size - side))
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        region = image[top:top + side, left:left + side]
        region[:] = region * (1 - ink[..., None]) + colour * ink[..., None]
        m = mask[top:top + side, left:left + side]
        m[ink > 0.5] = 1 + int(targets[k])
        m[(ink > 0.25) & (ink <= 0.5)] = 255
    return np.clip(image, 0, 255).astype(np.uint8), mask


def build(root: Path, n: int = 40, size: int = 64, seed: int = 0, *, palette_every: int = 3,
          classes_json: bool = True) -> Path:
    """``root/images/*.jpg`` and ``root/masks/*.png`` (every ``palette_every``-th mask a palette PNG, the others
    single-channel), plus ``classes.json``; returns ``root``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    backgrounds = _backgrounds()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = make_image_and_mask(rng, size, backgrounds, digits.images, digits.target)
        Image.fromarray(image).save(root / "images" / f"img{i:03d}.jpg", quality=95)
        m = Image.fromarray(mask)
        if palette_every and i % palette_every == 0:
            m = Image.frombytes("P", m.size, mask.tobytes())  # pixel values stay the indices
            m.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [255, 255, 255] * 253)
        m.save(root / "masks" / f"img{i:03d}.png")
    if classes_json:
        (root / "classes.json").write_text(json.dumps(CLASSES))
    return root
