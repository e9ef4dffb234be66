"""``automl-ft predict`` on real exported models: output format and order, inputs of every kind, errors, no torch.

The models are the pretrained backbones with a linear-probe head fitted on a few ../shared examples
(``bench_onnx.build_model``), exported by ``automl_ft.export.export_onnx`` exactly as ``tune`` exports: built once
per test session (shared with test_quantize.py and test_bench_onnx.py through the session's temp folder).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from automl_ft.cli import main
from automl_ft.predict import Predictor, run_predict

TEXTS = ["WINNER!! You have been selected to receive a 900 prize reward. Call 09061701461 to claim now",
         "Ok lar... Joking wif u oni...", "I'll be home by seven, want me to pick up some bread?",
         "URGENT! Your mobile number has won a 2000 bonus caller prize. Call 09058095201 from a landline",
         "Sorry, I'll call later", ("Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA "
                                   "to 87121 to receive entry question(std txt rate)"), "Did you catch the bus? Are you frying an egg?",
         "Nah I don't think he goes to usf, he lives around here though", "k"]


def built_model(tmp_path_factory: pytest.TempPathFactory, task: str) -> tuple[Path, object]:
    """A probe model for ``task`` ("text" or "image") and its data, built once per session (needs ../shared)."""
    from automl_ft.bench import bench_onnx

    if not bench_onnx.SHARED.is_dir():
        pytest.skip(f"../shared not found at {bench_onnx.SHARED}")
    data = bench_onnx.load_shared(task, limit_test=120)
    out = tmp_path_factory.getbasetemp() / "onnx-models" / task
    if not (out / "model.onnx").is_file():
        bench_onnx.build_model(out, data, image_size=64, train_limit=256)
    return out, data


@pytest.fixture(scope="session")
def text_model(tmp_path_factory) -> Path:
    return built_model(tmp_path_factory, "text")[0]


@pytest.fixture(scope="session")
def image_model(tmp_path_factory) -> Path:
    return built_model(tmp_path_factory, "image")[0]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, image_model) -> Path:
    """Nested folders of real CIFAR images, a hidden file that must be skipped; sorted listing is the order."""
    from automl_ft.bench.bench_onnx import SHARED

    root = tmp_path_factory.mktemp("images")
    src = sorted((SHARED / "cifar10_subset" / "test").rglob("*.png"))
    for i, p in enumerate(src[:: len(src) // 6][:6]):
        dest = root / ("a" if i < 3 else "b/deeper") / f"{i}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (root / ".hidden.png").write_bytes(b"not an image")
    return root


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _run(model: Path, inputs: list[str], stdin_text: str = "", **kw) -> tuple[int, list[dict], str]:
    import io

    out, err = io.StringIO(), io.StringIO()
    rc = run_predict(str(model), inputs, stdout=out, stdin=io.StringIO(stdin_text), stderr=err, **kw)
    return rc, _lines(out.getvalue()), err.getvalue()


def test_table_rows_in_order_with_source_and_batched_equals_unbatched(text_model, tmp_path):
    import pandas as pd

    texts = TEXTS * 3  # 27 rows, batch 4: several length-sorted windows and a ragged last batch
    table = tmp_path / "msgs.csv"
    pd.DataFrame({"text": texts}).to_csv(table, index=False)
    rc, rows, err = _run(text_model, [str(table)], batch_size=4)
    assert rc == 0, err
    assert [r["input"] for r in rows] == list(range(len(texts)))
    assert all(r["source"] == str(table) for r in rows)
    logits = Predictor(text_model).predict_logits([t for t in texts], batch_size=1)
    labels = json.loads((text_model / "labels.json").read_text())
    assert [r["label"] for r in rows] == [labels[i] for i in logits.argmax(1)]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose([r["score"] for r in rows], probs.max(1), atol=2e-4)
    assert "top_k" not in rows[0]


def test_top_k_lists_labels_by_score(text_model, tmp_path):
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))
    rc, rows, _ = _run(text_model, [str(table)], top_k=5)  # more than the 2 classes: clipped
    assert rc == 0
    for r in rows:
        assert len(r["top_k"]) == 2
        assert r["top_k"][0] == {"label": r["label"], "score": r["score"]}
        assert r["top_k"][0]["score"] >= r["top_k"][1]["score"]
        assert abs(sum(k["score"] for k in r["top_k"]) - 1) < 1e-4


def test_labelled_table_reports_accuracy_and_empty_rows_fail(text_model, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("text,label\n\"Ok lar... Joking wif u oni...\",ham\n\"\",ham\nSorry I'll call later,ham\n")
    rc, rows, err = _run(text_model, [str(table)])
    assert rc == 2
    assert [r["input"] for r in rows] == [0, 1, 2]
    assert rows[1]["error"] == "empty text" and "label" not in rows[1]
    assert rows[0]["true_label"] == "ham" and "label" in rows[2]
    assert "accuracy" in err and "1 of 3 inputs could not be classified" in err


def test_labels_outside_the_models_classes_are_not_scored(text_model, tmp_path):
    labels = json.loads((text_model / "labels.json").read_text())
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                             for t, y in zip(TEXTS[:3], [labels[0], "0", "0"])))
    rc, rows, err = _run(text_model, [str(table)])
    assert rc == 0 and len(rows) == 3
    correct = int(rows[0]["label"] == labels[0])
    assert f"accuracy {100 * correct:.2f}%" in err and "on 1 labelled inputs" in err
    assert "2 inputs have labels that are none of the model's classes ('0')" in err


def test_folder_is_recursive_in_sorted_order_and_a_corrupt_image_fails_alone(image_model, image_folder, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(image_folder, folder)
    (folder / "a" / "2b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    rc, rows, err = _run(image_model, [str(folder)], batch_size=4)
    expected = sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))
    assert [r["input"] for r in rows] == [str(p) for p in expected]
    broken = [r for r in rows if r["input"].endswith("2b_broken.png")]
    assert len(broken) == 1 and broken[0]["error"].startswith("unreadable image") and "label" not in broken[0]
    good = [r for r in rows if "error" not in r]
    assert len(good) == 6 and all(0 < r["score"] <= 1 for r in good)
    labels = json.loads((image_model / "labels.json").read_text())
    assert {r["label"] for r in good} <= set(labels)
    assert rc == 2 and err.count("\n") == 1 and "1 of 7" in err


def test_single_image_files_match_the_folder_run(image_model, image_folder):
    files = sorted(str(p) for p in image_folder.rglob("*.png") if not p.name.startswith("."))
    rc, rows, _ = _run(image_model, files[:2] + [str(image_folder / "b")], top_k=3)
    assert rc == 0
    assert [r["input"] for r in rows] == files[:2] + [f for f in files if "/b/" in f]
    _, folder_rows, _ = _run(image_model, [str(image_folder)], top_k=3)
    by_path = {r["input"]: r for r in folder_rows}
    for r in rows:
        assert r["label"] == by_path[r["input"]]["label"]
        assert abs(r["score"] - by_path[r["input"]]["score"]) < 1e-4
        assert len(r["top_k"]) == 3


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


@pytest.mark.parametrize("task", ["text", "image"])
def test_predict_never_imports_torch(task, text_model, image_model, image_folder):
    model = text_model if task == "text" else image_model
    inputs = ["-"] if task == "text" else [str(image_folder)]
    code = ("import sys\nfrom automl_ft.cli import main\nrc = main(['predict', sys.argv[1], *sys.argv[2:]])\n"
            "assert 'torch' not in sys.modules, 'predict imported torch'\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(model), *inputs], input="\n".join(TEXTS[:2]) + "\n",
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert len(_lines(proc.stdout)) == (2 if task == "text" else 6)


def test_stdin_lines_are_answered_as_they_arrive(text_model):
    """The second line is written only after the first answer is read: a buffering predict would hang here."""
    proc = subprocess.Popen([sys.executable, "-m", "automl_ft", "predict", str(text_model), "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        answers = []
        for i, text in enumerate([TEXTS[0], "", TEXTS[1]]):
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, f"no answer to line {i} within 60 s while stdin stays open"
            answers.append(json.loads(proc.stdout.readline()))
        proc.stdin.close()
        assert proc.wait(timeout=60) == 2  # the empty line is an error item
    finally:
        proc.kill()
    assert [a["input"] for a in answers] == [0, 1, 2]
    assert all(a["source"] == "-" for a in answers)
    assert answers[1]["error"] == "empty line" and "label" in answers[0] and "label" in answers[2]


@pytest.mark.parametrize("case", ["no-model-dir", "not-a-model-dir", "missing-input", "folder-for-text",
                                  "image-for-text", "table-for-image", "stdin-for-image", "unknown-suffix",
                                  "bad-provider", "bad-top-k", "int8-missing"])
def test_user_errors_are_one_line_exit_2(case, text_model, image_model, image_folder, tmp_path, capsys):
    image = str(sorted(image_folder.rglob("*.png"))[-1])
    table = tmp_path / "t.csv"
    table.write_text("text\nhello\n")
    (tmp_path / "notes.docx").write_text("x")
    t, i = str(text_model), str(image_model)
    argv = {
        "no-model-dir": ["predict", str(tmp_path / "nope"), "-"],
        "not-a-model-dir": ["predict", str(tmp_path), "-"],
        "missing-input": ["predict", t, str(table), str(tmp_path / "missing.csv")],
        "folder-for-text": ["predict", t, str(image_folder)],
        "image-for-text": ["predict", t, image],
        "table-for-image": ["predict", i, str(table)],
        "stdin-for-image": ["predict", i, "-"],
        "unknown-suffix": ["predict", t, str(tmp_path / "notes.docx")],
        "bad-provider": ["predict", t, "--provider", "tpu", "-"],
        "bad-top-k": ["predict", t, "--top-k", "0", "-"],
        "int8-missing": ["predict", t, "--int8", "-"],
    }[case]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == "", "nothing may be predicted before an input error is found"
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    if case == "missing-input":
        assert "missing.csv" in err
    if case == "bad-provider":
        assert "CPUExecutionProvider" in err


def test_cpu_provider_and_threads(text_model):
    rc, rows, _ = _run(text_model, ["-"], stdin_text=TEXTS[0] + "\n", provider="cpu", threads=1)
    assert rc == 0 and len(rows) == 1
    predictor = Predictor(text_model, provider="cpu", threads=1)
    assert predictor.session.get_providers() == ["CPUExecutionProvider"]
    assert predictor.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("header,record", [
    ("Text,LABEL", {"text_column": "text", "label_column": "label"}),
    (" Body ,Category", {"text_column": "body", "label_column": "category"}),
    ("TEXT,Label", {}),  # a model record without column names: the defaults, by the same rule
])
def test_table_columns_are_matched_by_tunes_rule(tmp_path, header, record):
    """tune read ``Text``/``LABEL`` as the text and label columns; predict asked for them exactly and refused the
    same table. Both use ``tables.match_column`` now."""
    from automl_ft.data.tables import choose_columns, read_table
    from automl_ft.predict import _table_items

    table = tmp_path / "t.csv"
    table.write_text(f"{header}\nhello there,ham\nwin a prize,spam\n")
    items = list(_table_items(table, record))
    assert [(it.payload, it.true_label) for it in items] == [("hello there", "ham"), ("win a prize", "spam")]
    df = read_table(table)
    tune_columns = choose_columns(df, table, record.get("text_column"), record.get("label_column"))
    assert [df[c].tolist()[0] for c in tune_columns] == ["hello there", "ham"]  # the same columns tune picks
