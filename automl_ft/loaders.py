"""Batches for training and evaluation: pre-tokenized, length-bucketed text and augmented images.

Speed on a 2-core CPU comes from not doing work: texts are tokenized once per (tokenizer, max_length) and shared
by every trial; batches are padded only to their own longest sequence, and training batches are drawn from
length-sorted buckets so that padding stays small (SMS spam: 25 tokens on average, 128 at most; padding every
batch to 128 would cost 5x); evaluation batches are fully sorted by length.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from automl_ft.modalities.text import TEXT_AUGMENTS
from automl_ft.preprocess import ImagePreprocess, TextPreprocess

# Buckets of this many batches are sorted by length before batching: batches stay random across buckets but
# hold sequences of similar length within one (the trick of fairseq / HF's group_by_length).
BUCKET_BATCHES = 50
# Decoded images and evaluation tensors are cached in memory up to this many bytes per process.
CACHE_BYTES = 1_500_000_000


class TokenCache:
    """Token ids per (tokenizer, max_length, texts): tokenized once, reused by every trial of a process."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, int, str], list[list[int]]] = {}

    def get(self, pre: TextPreprocess, texts: Sequence[str]) -> list[list[int]]:
        tok_key = hashlib.sha1(pre.tokenizer.to_str().encode()).hexdigest()
        text_key = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
        key = (tok_key, pre.max_length, text_key)
        if key not in self._store:
            self._store[key] = pre.encode(texts)
        return self._store[key]


def draw_order(n: int, rng: random.Random, weights: np.ndarray | None) -> list[int]:
    """The examples of one training epoch: shuffled, or (``weights``) ``n`` draws with replacement in proportion to
    the weights: the balanced sampler of imbalanced classification, which sees each class about equally often."""
    order = list(range(n))
    if weights is not None:
        return rng.choices(order, weights=[float(w) for w in weights], k=n)
    rng.shuffle(order)
    return order


# Cheap label-preserving perturbations of a training text (TEXT_AUGMENTS), redrawn every epoch (issue 16: augmentation
# for text on few examples). On token ids, so the tokenization cache still serves; the first and last ids ([CLS],
# [SEP]) stay.
TOKEN_DROPOUT = 0.1  # each inner token dropped with this probability (word dropout as in EDA, Wei & Zou 2019)
SPAN_DROP = 0.15  # one contiguous span of this share of the inner tokens removed


def perturb_tokens(ids: list[int], augment: str, rng: random.Random) -> list[int]:
    """``ids`` with ``augment`` applied (a new list; texts of under 4 inner tokens are left as they are)."""
    inner = ids[1:-1]
    if len(inner) < 4:
        return list(ids)
    if augment == "token-dropout":
        kept = [t for t in inner if rng.random() >= TOKEN_DROPOUT] or [rng.choice(inner)]
    elif augment == "span-drop":
        width = max(1, round(SPAN_DROP * len(inner)))
        start = rng.randrange(len(inner) - width + 1)
        kept = inner[:start] + inner[start + width:]
    else:
        raise ValueError(f"unknown text augmentation {augment!r}")
    return [ids[0], *kept, ids[-1]]


class TextBatches:
    """Batches of ``{"input_ids", "attention_mask"}`` torch tensors and training targets.

    ``targets`` is the task's array (class indices, multi-hot rows or standardized values): rows are taken as they
    are, so batching never depends on the task.
    """

    def __init__(self, ids: list[list[int]], targets: np.ndarray | Sequence, pre: TextPreprocess, batch_size: int, *,
                 shuffle: bool, seed: int = 0, weights: np.ndarray | None = None, augment: str | None = None):
        if augment not in (None, *TEXT_AUGMENTS):
            raise ValueError(f"text augment must be one of {TEXT_AUGMENTS}, got {augment!r}")
        self.augment = None if augment == "none" else augment
        self.ids = ids
        self.targets = np.asarray(targets)
        self.pre = pre
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.weights = weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    def _order(self) -> list[list[int]]:
        n, bs = len(self.ids), self.batch_size
        lengths = [len(x) for x in self.ids]
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: lengths[i])
            return [order[i:i + bs] for i in range(0, n, bs)]
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = draw_order(n, rng, self.weights)
        batches: list[list[int]] = []
        chunk = bs * BUCKET_BATCHES
        for start in range(0, n, chunk):
            bucket = sorted(order[start:start + chunk], key=lambda i: lengths[i])
            batches.extend(bucket[i:i + bs] for i in range(0, len(bucket), bs))
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]]:
        rng = random.Random(self.seed * 100_003 + self.epoch + 1)
        for idx in self._order():
            rows = [self.ids[i] for i in idx]
            if self.augment is not None:
                rows = [perturb_tokens(r, self.augment, rng) for r in rows]
            arrays = self.pre.pad(rows)
            inputs = {k: torch.from_numpy(v) for k, v in arrays.items()}
            yield inputs, torch.from_numpy(self.targets[idx]), idx


class ImageCache:
    """Decoded RGB images by path, kept while they fit in :data:`CACHE_BYTES` (CIFAR-sized data sets always do)."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self._images: dict[str, Any] = {}
        self._eval: dict[tuple, torch.Tensor] = {}

    def image(self, path: str) -> Any:
        from PIL import Image

        im = self._images.get(path)
        if im is not None:
            return im
        with Image.open(path) as f:
            im = f.convert("RGB")
        size = im.width * im.height * 3
        if self.used + size <= self.budget:
            self._images[path] = im
            self.used += size
        return im

    def eval_tensor(self, path: str, pre: ImagePreprocess) -> torch.Tensor:
        key = (path, pre.size, pre.resize, pre.interpolation, pre.mean, pre.std)
        t = self._eval.get(key)
        if t is None:
            t = torch.from_numpy(pre.apply(self.image(path)))
            if self.used + t.numel() * 4 <= self.budget:
                self._eval[key] = t
                self.used += t.numel() * 4
        return t


def train_image_transform(pre: ImagePreprocess, augment: str):
    """timm's training transform for ``augment`` (crop / crop-flip / randaugment), or the eval transform for none.

    Random-resized crops keep at least half the image (scale 0.5-1): the default 0.08 suits ImageNet-length
    training, not a few epochs on small images.
    """
    if augment == "none":
        return None
    from timm.data import create_transform

    return create_transform(
        input_size=pre.size, is_training=True, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
        hflip=0.0 if augment == "crop" else 0.5, vflip=0.0, color_jitter=None,
        auto_augment="rand-m7-mstd0.5-inc1" if augment == "randaugment" else None,
        interpolation=pre.interpolation, mean=pre.mean, std=pre.std, re_prob=0.0,
    )


class ImageBatches:
    """Batches of ``{"pixel_values"}`` tensors: augmented when training, the predict-time transform otherwise."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray | Sequence, pre: ImagePreprocess, batch_size: int,
                 *, augment: str | None, shuffle: bool, cache: ImageCache, seed: int = 0,
                 weights: np.ndarray | None = None):
        self.paths = list(paths)
        self.targets = np.asarray(targets)
        self.weights = weights
        self.pre = pre
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.cache = cache
        self.seed = seed
        self.epoch = 0
        self.transform = train_image_transform(pre, augment) if (augment and shuffle) else None
        # image_prefix.py: the model takes cached block outputs, so the pixels are a 1-pixel stand-in
        self.placeholder = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.paths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]]:
        order = list(range(len(self.paths)))
        if self.shuffle:
            order = draw_order(len(order), random.Random(self.seed * 100_003 + self.epoch), self.weights)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.placeholder:
                x = torch.zeros(len(idx), 3, 1, 1)
            elif self.transform is not None:
                x = torch.stack([self.transform(self.cache.image(self.paths[i])) for i in idx])
            else:
                x = torch.stack([self.cache.eval_tensor(self.paths[i], self.pre) for i in idx])
            yield {"pixel_values": x}, torch.from_numpy(self.targets[idx]), idx


def random_resized_box(width: int, height: int, rng: random.Random, scale: tuple[float, float] = (0.5, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A random crop box ``(left, top, right, bottom)`` of ``scale`` of the area and ``ratio`` aspect, as
    torchvision's RandomResizedCrop draws it (ten tries, then the whole image)."""
    import math

    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    return 0, 0, width, height


class SegmentationBatches(ImageBatches):
    """Batches of ``{"pixel_values"}`` and int64 masks ``[B, size, size]`` for spatial targets (``targets`` are
    mask paths).

    Training draws one geometric transform per example and applies it to image and mask alike: a random resized
    crop (scale 0.5-1, the classifier's) and, for ``crop-flip`` / ``randaugment``, a horizontal flip; images are
    resampled with the model's interpolation, masks with nearest neighbour (a blended class index is no class).
    ``randaugment`` adds colour jitter to the image only: RandAugment's shears and rotations would have to move the
    mask too. Evaluation uses the predict-time transform for the image and the same resize/crop for the mask.
    A training batch of one example is dropped: BatchNorm in a decoder cannot normalise a single 1x1 map.
    """

    def __init__(self, *args, augment: str | None, **kwargs):
        super().__init__(*args, augment=None, **kwargs)
        self.augment = augment if (augment and augment != "none" and self.shuffle) else None
        self._masks: dict[str, torch.Tensor] = {}

    def _eval_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from automl_ft.preprocess import read_mask

        path = str(self.targets[i])
        y = self._masks.get(path)
        if y is None:
            y = self._masks[path] = torch.from_numpy(self.pre.apply_mask(read_mask(path)))
        return self.cache.eval_tensor(self.paths[i], self.pre), y

    def _train_pair(self, i: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, ImageOps

        from automl_ft.preprocess import _RESAMPLE, read_mask

        image = self.cache.image(self.paths[i])
        mask = Image.fromarray(read_mask(str(self.targets[i])))
        box = random_resized_box(image.width, image.height, rng)
        size = (self.pre.size, self.pre.size)
        image = image.crop(box).resize(size, resample=Image.Resampling(_RESAMPLE[self.pre.interpolation]))
        mask = mask.crop(box).resize(size, resample=Image.Resampling.NEAREST)
        if self.augment != "crop" and rng.random() < 0.5:
            image, mask = ImageOps.mirror(image), ImageOps.mirror(mask)
        arr = np.asarray(image, dtype=np.float32) / 255.0
        if self.augment == "randaugment":  # brightness and contrast, image only
            arr = np.clip((arr - arr.mean()) * rng.uniform(0.7, 1.3) + arr.mean() * rng.uniform(0.7, 1.3), 0, 1)
        arr = (arr - np.asarray(self.pre.mean, np.float32)) / np.asarray(self.pre.std, np.float32)
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return x, torch.from_numpy(np.asarray(mask, dtype=np.int64))

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]]:
        order = list(range(len(self.paths)))
        rng = random.Random(self.seed * 100_003 + self.epoch)
        if self.shuffle:
            order = draw_order(len(order), rng, self.weights)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.shuffle and len(idx) == 1 and len(order) > 1:
                continue
            pairs = [self._train_pair(i, rng) if self.augment else self._eval_pair(i) for i in idx]
            yield {"pixel_values": torch.stack([p[0] for p in pairs])}, torch.stack([p[1] for p in pairs]), idx
