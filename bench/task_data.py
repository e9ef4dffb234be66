"""Small real data sets for every task and modality, built from what installs here.

scikit-learn's bundled data (the diabetes study, handwritten digits) and ../shared/data (Banking77): no label below
is made up from its own input. The tests (tests/conftest.py re-exports these names) and ``bench/bench_tasks.py``
build their tables with the same functions, so the bench measures the data the tests check.
"""

from __future__ import annotations

import pathlib


def write_table(path: pathlib.Path, records: list[dict]) -> pathlib.Path:
    """``records`` as a table in the format of ``path``'s suffix (.csv, .tsv, .jsonl, .parquet); list cells stay
    lists in JSONL and Parquet."""
    import json

    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif suffix == ".parquet":
        pd.DataFrame.from_records(records).to_parquet(path)
    else:
        pd.DataFrame.from_records(records).to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    return path


DIABETES_FIELDS = ("age", "sex", "body mass index", "mean blood pressure", "total serum cholesterol",
                   "LDL cholesterol", "HDL cholesterol", "total/HDL cholesterol ratio", "log serum triglycerides",
                   "blood sugar")


def diabetes_records() -> list[dict]:
    """scikit-learn's bundled diabetes study (442 patients) as text regression: each patient's ten baseline
    measurements written as a sentence (the unscaled values), the target the measured disease progression one
    year later (25-346, 214 distinct values). A real target for every row; serialising tabular records as text is
    how language models are applied to such data (TabLLM, Hegselmann et al. 2023)."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    out = []
    for x, y in zip(d.data, d.target):
        parts = [f"{name} {v:g}" for name, v in zip(DIABETES_FIELDS, x)]  # sex is coded 1/2 in the source
        out.append({"text": "Patient: " + ", ".join(parts) + ".", "label": float(y)})
    return out


# Facets of Banking77's intents: the words that recur across its 77 intent names (each in at least 4 of them),
# "top" + "up" as one. A query is tagged with every facet its intent's name carries ("card_payment_fee_charged"
# -> card, payment), none for 18 intents (e.g. "age_limit"): a real multi-label tagging of real queries, with
# empty label sets, derived from the data set's own annotation rather than from the text.
BANKING_FACETS = ("card", "cash", "charge", "exchange", "payment", "pending", "top_up", "transfer", "verify",
                  "withdrawal")


def banking_facets(intent: str) -> list[str]:
    words = set(intent.replace("top_up", "top-up").split("_"))
    return [f for f in BANKING_FACETS if f.replace("_", "-") in words]


def banking_facet_records(shared: pathlib.Path, n: int = 400, seed: int = 0) -> list[dict]:
    """``n`` Banking77 training queries (seeded sample) with their intent's facets as a list of labels."""
    import csv
    import random

    with (shared / "data" / "banking77" / "train.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows = random.Random(seed).sample(rows, n)
    return [{"text": r["text"], "label": banking_facets(r["category"])} for r in rows]


def digit_pair_images(root: pathlib.Path, n: int = 300, seed: int = 0, scale: int = 2
                      ) -> list[tuple[str, int, int]]:
    """``n`` images of two of scikit-learn's bundled handwritten digits side by side (8x16 pixels, scaled by
    ``scale``), written as PNGs under ``root/img/``. Returns (path relative to root, left digit, right digit): the
    true digits, so a two-digit number (0-99, image regression) and a label set (image multi-label) are real."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a, b = (int(j) for j in rng.choice(len(digits.target), 2, replace=False))
        pixels = np.concatenate([digits.images[a], digits.images[b]], axis=1) * (255.0 / 16.0)
        img = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), mode="L")
        img = img.resize((16 * scale, 8 * scale), Image.NEAREST).convert("RGB")
        rel = f"img/{i:04d}.png"
        img.save(root / rel)
        out.append((rel, int(digits.target[a]), int(digits.target[b])))
    return out


def write_digit_pairs(root: pathlib.Path, target: str, n: int = 300, seed: int = 0, name: str = "pairs.csv",
                      label_sep: str = "|") -> pathlib.Path:
    """A table of digit-pair images (relative paths) at ``root/name``; ``target`` ``number``: the two-digit
    number (image regression, 100 values), ``digits``: the set of digits shown (image multi-label; a list in
    JSONL/Parquet, ``label_sep``-joined in CSV/TSV), ``left``: the left digit (single-label image table)."""
    rows = digit_pair_images(root, n, seed)
    records = []
    for rel, a, b in rows:
        if target == "number":
            label: object = 10 * a + b
        elif target == "digits":
            labels = sorted({str(a), str(b)})
            label = labels if name.endswith((".jsonl", ".parquet")) else label_sep.join(labels)
        elif target == "left":
            label = str(a)
        else:
            raise ValueError(f"unknown target {target!r}")
        records.append({"image": rel, "label": label})
    return write_table(root / name, records)
