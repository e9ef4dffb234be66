"""Inference-time preprocessing without torch: tokenization and the evaluation image transform.

One implementation serves validation during training, the ONNX check at export and ``automl-ft predict``, so the
exported model sees exactly the inputs it was validated on. Only ``tokenizers``, Pillow and NumPy are imported:
``predict`` starts in well under a second because it never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PREPROCESS_FILE = "preprocess.json"
TOKENIZER_FILE = "tokenizer.json"

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass
class ImagePreprocess:
    """Resize the shorter side to ``resize`` (``interpolation``), center-crop ``size``, scale to [0, 1], normalize.

    For a model trained at ``size`` the default is ``resize == size``: no border is cut, which matters for small
    source images (CIFAR's 32 px objects fill the frame).
    """

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    kind: str = "image"

    def load(self, path: str | Path | Any) -> np.ndarray:
        """An image file (or an already opened PIL image, as the Python API passes) -> :meth:`apply`'s array."""
        from PIL import Image

        if isinstance(path, Image.Image):
            return self.apply(path)
        with Image.open(path) as im:
            return self.apply(im)

    def apply(self, image: Any) -> np.ndarray:
        """A PIL image -> float32 array ``[3, size, size]``."""
        from PIL import Image

        im = image.convert("RGB")
        w, h = im.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        im = im.resize((nw, nh), resample=Image.Resampling(_RESAMPLE[self.interpolation]))
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(im, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def batch(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack(images).astype(np.float32)}

    def load_whole(self, path: str | Path, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The whole image (no crop) for a fully convolutional model: the shorter side resized to ``resize`` and
        both sides rounded to a multiple of ``multiple``, normalized; returns the array ``[3, H, W]`` and the
        original ``(width, height)`` (what the predicted mask is resized back to)."""
        from PIL import Image

        with Image.open(path) as f:
            im = f.convert("RGB")
        w, h = im.size
        scale = self.resize / min(w, h)
        nw, nh = (max(multiple, round(v * scale / multiple) * multiple) for v in (w, h))
        im = im.resize((nw, nh), resample=Image.Resampling(_RESAMPLE[self.interpolation]))
        arr = np.asarray(im, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1)), (w, h)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """A class-index mask ``[H, W]`` -> int64 ``[size, size]`` by the same resize and center crop as
        :meth:`apply`, with nearest-neighbour resampling (an interpolated class index is no class)."""
        from PIL import Image

        im = Image.fromarray(np.asarray(mask, dtype=np.uint8))
        w, h = im.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        im = im.resize((nw, nh), resample=Image.Resampling.NEAREST)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        return np.asarray(im, dtype=np.int64)


@lru_cache(maxsize=4096)
def read_mask(path: str) -> np.ndarray:
    """:func:`load_mask`, cached per process (a small data set's masks are decoded once, not every epoch); callers
    must not modify the array."""
    return load_mask(path)


def load_mask(path: str | Path) -> np.ndarray:
    """A segmentation mask file as uint8 class indices ``[H, W]``: a single-channel PNG of indices (mode L) or a
    palette PNG (mode P, whose pixel values are the indices); an RGB image whose three channels agree is read as
    one channel.

    Raises:
        ValueError: a colour image (channels differ: colours, not indices) or indices above 255.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("L", "P"):
            return np.asarray(im, dtype=np.uint8).copy()
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im)
            if arr.size and int(arr.max()) > 255:
                raise ValueError(f"indices up to {int(arr.max())}; class indices must be 0-254 (255 = ignore)")
            return arr.astype(np.uint8)
        arr = np.asarray(im.convert("RGB"))
    if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()):
        raise ValueError("a colour image, not a mask of class indices; save masks as single-channel or palette PNG")
    return arr[..., 0].copy()


class TextPreprocess:
    """A Hugging Face ``tokenizers.Tokenizer`` with truncation to ``max_length`` and dynamic padding."""

    kind = "text"

    def __init__(self, tokenizer: Any, max_length: int, pad_id: int):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)

    @classmethod
    def from_hf(cls, hf_tokenizer: Any, max_length: int) -> TextPreprocess:
        """From a transformers fast tokenizer (its backend ``tokenizers.Tokenizer`` is copied, not shared)."""
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        pad = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        return cls(backend, max_length, pad)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Pad to the longest sequence of this batch only (dynamic padding), rounded up to a multiple of 8.

        Rounding keeps the number of distinct shapes small (16 instead of 128 at max_length 128): every new shape
        costs oneDNN (and cuDNN/Triton autotuning on GPUs) a kernel selection, which made the first epoch of a
        MiniLM trial 2.3x slower than the next ones (136 s against 59 s on SMS spam, 2-core CPU).
        """
        longest = max(1, max(len(x) for x in ids))
        longest = min(max(longest, self.max_length), -(-longest // 8) * 8) if longest % 8 else longest
        input_ids = np.full((len(ids), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def save(self, directory: Path) -> None:
        self.tokenizer.save(str(directory / TOKENIZER_FILE))


def save_preprocess(directory: Path, pre: ImagePreprocess | TextPreprocess, extra: dict[str, Any]) -> None:
    """Write ``preprocess.json`` (and ``tokenizer.json`` for text) into an exported model directory."""
    if isinstance(pre, ImagePreprocess):
        data = asdict(pre)
    else:
        pre.save(directory)
        data = {"kind": "text", "max_length": pre.max_length, "pad_id": pre.pad_id, "tokenizer": TOKENIZER_FILE}
    data.update(extra)
    (directory / PREPROCESS_FILE).write_text(json.dumps(data, indent=2) + "\n")


def load_preprocess(directory: Path) -> tuple[ImagePreprocess | TextPreprocess, dict[str, Any]]:
    """Read what :func:`save_preprocess` wrote; returns the preprocessor and the whole record."""
    data = json.loads((directory / PREPROCESS_FILE).read_text())
    if data.get("kind") == "image":
        fields = ("size", "resize", "mean", "std", "interpolation")
        return ImagePreprocess(**{k: (tuple(data[k]) if k in ("mean", "std") else data[k]) for k in fields}), data
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / data.get("tokenizer", TOKENIZER_FILE)))
    return TextPreprocess(tok, data["max_length"], data["pad_id"]), data
