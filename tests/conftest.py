"""Shared test set-up.

Triton's interpreter must be switched on before ``automl_ft.kernels`` is imported (``triton.jit`` reads
``TRITON_INTERPRET`` when it decorates), so it is set here, first. On a machine with a CUDA device the kernels
run compiled instead and the interpreter stays off.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def pytest_report_header(config):
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [f"CUDA device: {cuda}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"]


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """``../shared`` beside the checkout (real offline data sets); tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}")
    return SHARED


# ----------------------------------------------------------------------------------------------- tiny fixtures
# Real backbones are exercised by the slow end-to-end tests; unit tests use tiny, randomly initialised models of
# the same architectures so a training run takes seconds.

TEXT_WORDS = {
    "sports": ["goal", "match", "team", "score", "league", "coach", "striker", "stadium"],
    "weather": ["rain", "sunny", "storm", "cloud", "forecast", "wind", "snow", "humid"],
    "food": ["pizza", "pasta", "salad", "bread", "cheese", "soup", "spicy", "dessert"],
}


def make_text_rows(n_per_class: int = 20, seed: int = 0) -> list[tuple[str, str]]:
    import random

    rng = random.Random(seed)
    filler = ["the", "a", "today", "really", "very", "we", "saw", "about", "and", "with"]
    rows = []
    for label, words in TEXT_WORDS.items():
        for i in range(n_per_class):
            toks = rng.sample(words, 2) + rng.sample(filler, 3) + [f"n{i}"]
            rng.shuffle(toks)
            rows.append((" ".join(toks), label))
    rng.shuffle(rows)
    return rows


def write_csv(path: pathlib.Path, rows, header=("text", "label"), sep=",") -> pathlib.Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=sep)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def text_csv(tmp_path) -> pathlib.Path:
    """120 rows, 3 classes separable by keywords (a tiny random BERT learns it in ~4 epochs)."""
    return write_csv(tmp_path / "texts.csv", make_text_rows(40))


COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_image_folder(root: pathlib.Path, n_per_class: int = 12, size: int = 20, classes=None) -> pathlib.Path:
    """Class folders of noisy solid-colour PNGs (trivially separable, distinct bytes per image)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes or COLORS:
        color = COLORS.get(name, (128, 128, 128))
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255)
            Image.fromarray(arr.astype("uint8")).save(d / f"{i:03d}.png")
    return root


def make_png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A 1-bit greyscale PNG of any size, built by hand so a 10000x10000 one costs nothing to make.

    ``rows``: the raw scanlines (a filter byte and ``ceil(width / 8)`` bytes each); None writes a short, truncated
    stream, enough for PIL's ``Image.open``, which reads only the header (and checks its pixel limit there).
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = rows if rows is not None else b"\x00" * 64
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def image_folder(tmp_path) -> pathlib.Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> pathlib.Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a local Hugging Face model folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from automl_ft.backbones import minilm_dir

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(out)
    return out


@pytest.fixture
def tiny_text_space(tmp_path, tiny_bert_dir) -> pathlib.Path:
    """A search space over the tiny BERT with both adaptations, 1-2 epochs."""
    path = tmp_path / "tiny-text.yaml"
    path.write_text(f"""
task: text-classification
backbones:
  {tiny_bert_dir}:
    max_length: 32
    freeze_depth: {{low: 0, high: 1}}
adaptation:
  full: {{lr: {{low: 1.0e-3, high: 3.0e-3, log: true}}}}
  lora: {{rank: [2, 4], alpha: [8], dropout: 0.0, lr: {{low: 3.0e-3, high: 1.0e-2, log: true}}}}
training:
  batch_size: [8]
  epochs: {{low: 1, high: 2}}
  head_lr_scale: 5.0
  patience: 2
pruner: {{type: none}}
probe: false  # these fixtures test training, resuming and faults: trial 0 is a sampled one
""")
    return path


@pytest.fixture
def slow_text_setup(tmp_path, tiny_bert_dir) -> tuple[pathlib.Path, pathlib.Path]:
    """Full fine-tuning of the tiny BERT for three epochs over 600 rows, no pruning: trials long enough to
    interrupt (Ctrl-C, kill -9) between their epochs. Returns (data, space)."""
    data = write_csv(tmp_path / "texts.csv", make_text_rows(200))
    space = tmp_path / "space.yaml"
    space.write_text(f"""
task: text-classification
backbones:
  {tiny_bert_dir}: {{max_length: 32, freeze_depth: 0}}
adaptation:
  full: {{lr: {{low: 1.0e-3, high: 3.0e-3, log: true}}}}
training: {{batch_size: 8, epochs: 3, patience: 3}}
pruner: {{type: none}}
probe: false  # these fixtures test training, resuming and faults: trial 0 is a sampled one
""")
    return data, space


@pytest.fixture
def tiny_image_space(tmp_path) -> pathlib.Path:
    path = tmp_path / "tiny-image.yaml"
    path.write_text("""
task: image-classification
backbones:
  timm:test_efficientnet:
    image_size: 32
    freeze_depth: {low: 0, high: 2}
    augment: [crop-flip]
    options: {pretrained: false}
adaptation:
  full: {lr: {low: 1.0e-3, high: 3.0e-3, log: true}}
  lora: {rank: [4], alpha: [8], dropout: 0.0, lr: 5.0e-3}
training:
  batch_size: [8]
  epochs: {low: 1, high: 2}
pruner: {type: none}
probe: false
""")
    return path


# ----------------------------------------------------------------------------- real offline data for every task
# Small real sets built from what installs here (scikit-learn's bundled data, ../shared/data); they live in
# bench/task_data.py so that ``automl-ft bench tasks`` measures the very data these tests check.

from automl_ft.bench.task_data import (  # noqa: F401  (re-exported: tests import them from here)
    BANKING_FACETS,
    DIABETES_FIELDS,
    banking_facet_records,
    banking_facets,
    diabetes_records,
    digit_pair_images,
    write_digit_pairs,
    write_table,
)
