"""Semantic segmentation (problem ``segmentation``): one class per pixel, a per-pixel softmax head.

A label is the path of a mask file (a single-channel or palette PNG whose pixel values are class indices; 255 is
the ignore index: those pixels carry no loss and no score). Masks are read lazily, by the batches and by the
metrics, at the resolution the model sees: the image's resize and center crop with nearest resampling
(:meth:`automl_ft.preprocess.ImagePreprocess.apply_mask`). The task says its targets are *spatial*
(:attr:`Task.spatial_targets`), which is all the image modality needs to know to transform image and mask together.

Loss: a searched mix of soft Dice and cross-entropy (``dice:0.5`` = 0.5 x Dice + 0.5 x CE; ``ce`` alone). Cross-
entropy alone lets a dominant background class win; Dice weighs every present class equally, but alone it trains
slowly from scratch heads, hence the mix. Metrics (NumPy only, from one confusion matrix over the valid pixels):
mIoU (primary: what the pruner watches), per-class IoU and Dice, pixel accuracy and the mean cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from automl_ft.errors import DataError

from . import register_task
from .base import ParsedLabels, Task, format_rows, is_missing_cell, logsumexp, num, pct

IGNORE_INDEX = 255
# (kind, weight of Dice); the rest of the weight is cross-entropy. The first is the default.
LOSSES = {"dice:0.5": 0.5, "ce": 0.0, "dice:0.25": 0.25, "dice:0.75": 0.75}
def read_mask(path: str) -> np.ndarray:
    """The mask at ``path`` as uint8 class indices (decoded once per process; callers must not modify it)."""
    from automl_ft.preprocess import read_mask as cached

    return cached(str(path))


def mask_at(path: str, size: int) -> np.ndarray:
    """The mask at ``path`` resized (shorter side) and center-cropped to ``size`` x ``size`` like the eval image."""
    from automl_ft.preprocess import ImagePreprocess

    return ImagePreprocess(size=size, resize=size, mean=(0, 0, 0), std=(1, 1, 1)).apply_mask(read_mask(path))


def confusion(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = valid pixels of true class i predicted as j (pixels at the ignore index, or of an index
    >= ``num_classes``, are left out)."""
    valid = true < num_classes
    return np.bincount(num_classes * true[valid].astype(np.int64) + pred[valid].astype(np.int64),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(cm: np.ndarray) -> dict[str, Any]:
    """mIoU, per-class IoU and Dice (None for a class absent from truth and predictions), pixel accuracy."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    union = tp + fp + fn
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
    total = cm.sum()
    return {"miou": float(np.nanmean(iou)) if present.any() else 0.0,
            "mean_dice": float(np.nanmean(dice)) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
            "iou": [None if np.isnan(v) else float(v) for v in iou],
            "dice": [None if np.isnan(v) else float(v) for v in dice]}


@register_task
class Segmentation(Task):
    """One class out of ``classes`` per pixel."""

    name = "segmentation"
    # transformers has no problem_type for dense outputs; the Hub's name for the task is used as the card's tag
    hf_problem_type = "semantic_segmentation"
    description = "semantic segmentation: one class per pixel (per-pixel softmax, Dice + cross-entropy)"
    output_doc = ("one score map per class, `[batch, classes, height, width]` in `labels.json` order; the highest "
                  "score per pixel is its class")
    detect_priority = 10  # never detected from label cells: the data layout (images/ + masks/) decides
    uses_label_smoothing = False
    spatial_targets = True
    modalities = ("image",)

    def __init__(self, classes: list[str], train_pixels: list[int] | None = None):
        super().__init__(classes)
        self.train_pixels = list(train_pixels) if train_pixels is not None else None

    # ---- raw labels: mask paths ---------------------------------------------------------------------------------
    @classmethod
    def looks_like(cls, cells: list, label_sep: str) -> str | None:
        return None  # a label column of paths looks like classes; the images/masks layout or --task decides

    @classmethod
    def parse_labels(cls, cells: list, label_sep: str) -> ParsedLabels:
        """Mask paths as given (stripped); empty cells are missing rows. Classes come from the masks themselves
        (the data layer reads them), so ``classes`` is empty here."""
        labels, missing, bad = [], [], []
        for i, cell in enumerate(cells):
            if is_missing_cell(cell) or not str(cell).strip():
                missing.append(i)
            elif not isinstance(cell, str):
                bad.append(i)
            else:
                labels.append(cell.strip())
        if bad:
            raise DataError(f"label column: {format_rows(bad)} hold no mask path; a segmentation label is the path "
                            "of a mask PNG")
        return ParsedLabels([], labels, missing, [f"{len(missing)} row(s) without a mask dropped"] if missing else [])

    @classmethod
    def strata(cls, labels: list) -> np.ndarray:
        return np.zeros(len(labels), dtype=np.int64)  # one group: a seeded random split

    @classmethod
    def fit(cls, classes: list[str], train_labels: list, **options: Any) -> Segmentation:
        """Count the training pixels per class (what the majority-class baseline predicts)."""
        if options:
            raise TypeError(f"segmentation fit takes no options, got {', '.join(sorted(options))}")
        if len(classes) < 2:
            raise ValueError(f"segmentation needs at least 2 classes, got {len(classes)}")
        counts = np.zeros(len(classes), dtype=np.int64)
        for path in train_labels:
            m = read_mask(path)
            counts += np.bincount(m[m < len(classes)], minlength=len(classes))[: len(classes)]
        return cls(classes, counts.tolist())

    # ---- fitted ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "train_pixels": self.train_pixels, "ignore_index": IGNORE_INDEX}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        pixels = state.get("train_pixels")
        self.train_pixels = [int(c) for c in pixels] if pixels is not None else None

    @property
    def primary_metric(self) -> str:
        return "miou"

    def targets(self, labels: list) -> np.ndarray:
        """The mask paths: the batches read each mask and turn it into an int64 ``[H, W]`` target with the same
        geometric transform as its image (a mask cannot be resized before the crop is drawn)."""
        return np.asarray(list(labels), dtype=object)

    def loss_choices(self) -> list[str]:
        return list(LOSSES)

    def loss(self, *, label_smoothing: float = 0.0, class_weights: np.ndarray | None = None,
             kind: str | None = None) -> Callable[..., Any]:
        """``w x soft Dice + (1 - w) x cross-entropy`` over the valid pixels (target != 255); ``logits``
        ``[B, C, H, W]``, ``targets`` int64 ``[B, H, W]``. Dice is averaged over the classes present in the batch's
        targets, so an absent class neither helps nor hurts."""
        import torch
        import torch.nn.functional as F

        w = LOSSES[self._check_kind(kind)]
        if class_weights is not None:
            raise ValueError("segmentation takes no class weights (Dice already weighs the classes equally)")
        n = self.head_size

        def dice_ce(logits, targets):
            ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
            if w == 0.0:
                return ce
            valid = (targets != IGNORE_INDEX).unsqueeze(1).to(logits.dtype)
            probs = logits.softmax(1) * valid
            onehot = F.one_hot(targets.clamp(0, n - 1), n).permute(0, 3, 1, 2).to(logits.dtype) * valid
            inter = (probs * onehot).sum((0, 2, 3))
            denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
            present = onehot.sum((0, 2, 3)) > 0
            dice = 1 - (2 * inter + 1.0) / (denom + 1.0)
            dice = dice[present].mean() if bool(present.any()) else logits.sum() * 0
            ce = torch.nan_to_num(ce)  # a batch of only ignored pixels has no CE term
            return w * dice + (1 - w) * ce

        return dice_ce

    def _masks(self, labels: list, size: tuple[int, int]) -> list[np.ndarray]:
        if size[0] != size[1]:
            raise ValueError(f"segmentation metrics expect square score maps, got {size}")
        return [mask_at(p, size[0]) for p in labels]

    def metrics(self, logits: np.ndarray, labels: list) -> dict[str, Any]:
        """mIoU, mean Dice, pixel accuracy, per-class IoU / Dice and the mean cross-entropy of ``logits``
        ``[n, C, H, W]`` against the masks of ``labels`` at the logits' resolution."""
        logits = np.asarray(logits)
        n = self.head_size
        cm = np.zeros((n, n), dtype=np.int64)
        nll_sum, valid_sum = 0.0, 0
        for lg, true in zip(logits, self._masks(labels, logits.shape[2:]) if len(logits) else []):
            cm += confusion(lg.argmax(0), true, n)
            valid = true < n
            if valid.any():
                flat = lg.reshape(n, -1)[:, valid.reshape(-1)].astype(np.float64)
                t = true[valid]
                nll_sum += float((logsumexp(flat, axis=0) - flat[t, np.arange(len(t))]).sum())
                valid_sum += int(valid.sum())
        out = scores(cm)
        out["per_class"] = {c: {"iou": out["iou"][i], "dice": out["dice"][i],
                                "pixels": int(cm[i].sum())} for i, c in enumerate(self.classes)}
        out["loss"] = nll_sum / valid_sum if valid_sum else 0.0
        out["num_examples"] = len(labels)
        out["num_pixels"] = valid_sum
        return out

    def baseline(self, train_labels: list, val_labels: list) -> float:
        """mIoU on the validation masks of predicting the training majority class at every pixel."""
        counts = self.train_pixels if self.train_pixels is not None else type(self).fit(
            self.classes, train_labels).train_pixels
        majority = int(np.argmax(counts))
        n = self.head_size
        cm = np.zeros((n, n), dtype=np.int64)
        for path in val_labels:
            m = read_mask(path)
            cm += confusion(np.full_like(m, majority), m, n)
        return scores(cm)["miou"]

    def decode(self, logits: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """Per input: ``mask`` (uint8 class indices ``[H, W]``: predict writes it as a PNG and prints its path) and
        ``class_fractions`` (the share of pixels of each class, rounded to 6 decimals)."""
        out = []
        for lg in np.asarray(logits):
            mask = lg.argmax(0).astype(np.uint8)
            frac = np.bincount(mask.reshape(-1), minlength=self.head_size) / max(1, mask.size)
            out.append({"mask": mask, "class_fractions": {c: round(float(f), 6)
                                                          for c, f in zip(self.classes, frac)}})
        return out

    def agreement(self, a_logits: np.ndarray, b_logits: np.ndarray) -> float:
        """Fraction of pixels (over all inputs) whose predicted class matches."""
        a, b = np.asarray(a_logits).argmax(1), np.asarray(b_logits).argmax(1)
        return float((a == b).mean()) if a.size else 1.0

    def describe(self, metrics: dict[str, Any]) -> str:
        return (f"mIoU {pct(metrics.get('miou'))} (mean Dice {pct(metrics.get('mean_dice'))}, pixel accuracy "
                f"{pct(metrics.get('pixel_accuracy'))})")

    def card_rows(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        rows = [("Primary metric", "mIoU (mean intersection over union of the classes present)"),
                ("mIoU", pct(metrics.get("miou"))), ("Mean Dice", pct(metrics.get("mean_dice"))),
                ("Pixel accuracy", pct(metrics.get("pixel_accuracy"))),
                ("Loss (cross-entropy per pixel)", num(metrics.get("loss"))),
                ("Examples", str(metrics.get("num_examples")))]
        for c, s in (metrics.get("per_class") or {}).items():
            rows.append((f"IoU / Dice: {c}", f"{pct(s.get('iou'))} / {pct(s.get('dice'))}"))
        return rows

    def summary(self, splits: dict[str, list]) -> dict[str, Any]:
        """``class_pixels``: ``{class: {split: pixels}}`` and ``ignored_pixels`` per split."""
        n = self.head_size
        pixels: dict[str, np.ndarray] = {}
        ignored: dict[str, int] = {}
        for s, labels in splits.items():
            counts = np.zeros(n + 1, dtype=np.int64)
            for p in labels:
                m = read_mask(p)
                counts += np.bincount(np.minimum(m.reshape(-1), n), minlength=n + 1)[: n + 1]
            pixels[s], ignored[s] = counts[:n], int(counts[n])
        return {"class_pixels": {c: {s: int(pixels[s][i]) for s in splits} for i, c in enumerate(self.classes)},
                "ignored_pixels": ignored}

    def encode_true(self, cell: Any, label_sep: str) -> tuple[Any, list[str]]:
        return None, []  # predict scores no masks (yet): a mask column is ignored there
