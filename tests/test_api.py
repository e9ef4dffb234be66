"""The Python API (automl_ft.tune / automl_ft.load) on tiny models: the same answers as the CLI, silence by default,
exceptions instead of exits, DataFrames in (list cells for multi-label), torch-free inference, and the README's
example run as written (with a tiny space and data substituted)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import automl_ft
from automl_ft.cli import main
from automl_ft.errors import DataError, ModelDirError, SearchFailedError, UsageError
from tests.conftest import TEXT_WORDS

ROOT = Path(__file__).resolve().parents[1]


def cli_predict(capsys, *args: str) -> tuple[list[dict], str]:
    capsys.readouterr()
    assert main(["predict", *args]) == 0
    out, err = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()], err


def test_import_is_light():
    code = ("import sys, automl_ft; heavy = [m for m in ('torch', 'optuna', 'onnxruntime', 'pandas', 'transformers', "
            "'numpy') if m in sys.modules]; assert not heavy, heavy; assert callable(automl_ft.tune) and "
            "callable(automl_ft.load); print(automl_ft.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == automl_ft.__version__
    # The engine's modules never shadow the API's functions (a submodule named tune would replace automl_ft.tune).
    import importlib

    for name in ("automl_ft.cli", "automl_ft.tuning", "automl_ft.runs"):
        importlib.import_module(name)
    assert automl_ft.tune is automl_ft.api.tune and automl_ft.load is automl_ft.api.load


def test_tune_a_path_silently_then_predict_like_the_cli(tmp_path, text_csv, tiny_text_space, capsys):
    run = tmp_path / "run"
    result = automl_ft.tune(text_csv, run, space=tiny_text_space, trials=2, seed=1)
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # nothing printed without progress=True

    study = optuna.load_study(study_name=json.loads((run / "run.json").read_text())["study"],
                              storage=f"sqlite:///{run / 'study.db'}")
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert result.model_dir == run / "best" and result.run_dir == run
    assert result.best_trial == metrics["trial"] == study.best_trial.number
    assert result.val_metric == "val_accuracy" and result.val_score == pytest.approx(study.best_value)
    assert result.config == study.best_trial.user_attrs["config"] and result.config["backbone"]
    assert result.test_metrics == metrics["test"] and result.metrics == metrics
    assert result.task == "text-classification"
    lazy = dataclasses.replace(result, _study=None).study  # loaded from the run's storage on first use
    assert isinstance(lazy, optuna.Study) and len(lazy.trials) == 2
    assert "automl-ft tune" in json.loads((run / "run.json").read_text())["commands"][0]

    model = result.load()
    assert model.task == "text-classification" and model.labels == ["food", "sports", "weather"]
    assert model.metrics == metrics
    # The same table through the API and through `automl-ft predict`: identical rows and the same scores.
    rows, err = cli_predict(capsys, str(run / "best"), str(text_csv))
    table = pd.read_csv(text_csv)
    assert model.predict(table, as_dicts=True) == [{**r, "source": "DataFrame"} if "source" in r else r
                                                   for r in rows]
    frame = model.predict(table["text"].tolist())
    assert list(frame.columns) == ["input", "label", "score"]
    assert frame[["label", "score"]].to_dict("records") == [{"label": r["label"], "score": r["score"]} for r in rows]
    # evaluate: the figures the CLI prints for a labeled table, from a path or a DataFrame.
    scores = model.evaluate(text_csv)
    assert scores == model.evaluate(table)
    assert scores["num_examples"] == 120
    assert scores["accuracy"] == pytest.approx((frame["label"] == table["label"]).mean())
    assert f"{model._predictor.task.describe(scores)} on 120 labelled inputs" in err
    proba = model.predict_proba(table["text"].tolist()[:10])
    assert list(proba.columns) == model.labels and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert proba.idxmax(axis=1).tolist() == frame["label"].tolist()[:10]
    assert np.allclose(proba.max(axis=1), frame["score"][:10], atol=1e-6)
    # top_k and one-string inputs, the CLI's fields; an empty text is an error row, not an exception.
    top = model.predict(["goal match team", ""], top_k=2, as_dicts=True)
    assert len(top[0]["top_k"]) == 2 and top[1] == {"input": 1, "error": "empty text"}
    assert model.predict("rain storm forecast", as_dicts=True)[0]["input"] == 0

    # The same call again resumes: no new trial, the same best model.
    again = automl_ft.tune(text_csv, run, space=tiny_text_space, trials=2, seed=1)
    assert again.best_trial == result.best_trial and len(again.study.trials) == 2
    assert capsys.readouterr() == ("", "")


def test_progress_true_prints_the_cli_messages(tmp_path, text_csv, tiny_text_space, capsys):
    automl_ft.tune(text_csv, tmp_path / "run", space=tiny_text_space, trials=1, progress=True)
    err = capsys.readouterr().err
    assert "Study " in err and "Best: trial 0" in err and "Predict: automl-ft predict" in err


def multilabel_frame(n: int = 90) -> pd.DataFrame:
    """Texts that talk about one or two topics; their labels are lists of those topics (and one row of none)."""
    rng = np.random.default_rng(0)
    topics = sorted(TEXT_WORDS)
    rows = []
    for i in range(n):
        chosen = sorted(rng.choice(topics, size=1 + i % 2, replace=False).tolist())
        words = [w for t in chosen for w in rng.choice(TEXT_WORDS[t], 2, replace=False).tolist()]
        rows.append({"text": " ".join(words + [f"n{i}"]), "label": chosen})
    return pd.DataFrame(rows)


def test_tune_a_multilabel_dataframe_with_list_cells(tmp_path, tiny_bert_dir, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(f"""
task: text
backbones:
  {tiny_bert_dir}: {{max_length: 24, freeze_depth: 0}}
adaptation:
  full: {{lr: 3.0e-3}}
training: {{batch_size: 16, epochs: 1}}
pruner: {{type: none}}
""")
    df = multilabel_frame()
    run = tmp_path / "run"
    result = automl_ft.tune(df, run, space=space, trials=1)
    assert capsys.readouterr() == ("", "")
    assert result.task == "text-multilabel" and result.val_metric == "val_micro_f1"
    # The DataFrame was written once beside the run folder (never inside it), lists kept, and recorded as the data.
    copies = list((tmp_path / "run.data").glob("*.parquet"))
    assert len(copies) == 1 and not list(run.rglob("*.parquet"))
    assert json.loads((run / "run.json").read_text())["data_source"] == str(copies[0])
    assert pd.read_parquet(copies[0])["label"].map(list).tolist() == df["label"].tolist()
    data_summary = json.loads((run / "data_summary.json").read_text())
    assert data_summary["task"] == "text-multilabel"

    model = automl_ft.load(result.model_dir)
    assert model.labels == sorted(TEXT_WORDS) and model.task == "text-multilabel"
    preds = model.predict(df)
    assert {"labels", "scores", "true_label"} <= set(preds.columns)
    assert preds["true_label"].tolist() == df["label"].tolist()
    proba = model.predict_proba(df["text"].tolist())
    assert list(proba.columns) == model.labels
    assert [{k: round(v, 6) for k, v in row.items()} for row in proba.to_dict("records")] == preds["scores"].tolist()
    scores = model.evaluate(df)
    assert scores["num_examples"] == len(df) and "micro_f1" in scores
    # The same DataFrame again resumes the same study from the same copy; another one is refused, nothing written.
    assert automl_ft.tune(df.copy(), run, space=space, trials=1).best_trial == result.best_trial
    with pytest.raises(UsageError, match="holds another study"):
        automl_ft.tune(df.iloc[:60], run, space=space, trials=1)
    assert list((tmp_path / "run.data").glob("*.parquet")) == copies  # the refused one's copy is removed


def test_dataframe_copy_lives_beside_the_run_with_absolute_image_paths(tmp_path, monkeypatch):
    """Where tune() keeps a DataFrame: OUT.data/<content hash>.parquet (outside OUT, which tune refuses to hold its
    data), image paths made absolute from the current folder, one file per content."""
    from automl_ft.api import _dataframe_source

    monkeypatch.chdir(tmp_path)
    df = pd.DataFrame({"image": ["imgs/a.png", "imgs/b.png"], "label": ["x", "y"]})
    out = tmp_path / "runs" / "r"
    path, created = _dataframe_source(df, out, {})
    assert created and path.parent == tmp_path / "runs" / "r.data" and path.suffix == ".parquet" and not out.exists()
    assert pd.read_parquet(path)["image"].tolist() == [str(tmp_path / "imgs/a.png"), str(tmp_path / "imgs/b.png")]
    assert df["image"].tolist() == ["imgs/a.png", "imgs/b.png"]  # the caller's frame is not changed
    assert _dataframe_source(df.copy(), out, {}) == (path, False)
    assert _dataframe_source(df.iloc[:1], out, {})[0] != path
    with pytest.raises(DataError, match="cannot be stored as Parquet"):
        _dataframe_source(pd.DataFrame({"text": ["a", "b"], "label": [1, "x"]}), out, {})


def test_image_model_predicts_paths_pil_images_and_arrays_like_the_cli(tmp_path, image_folder, tiny_image_space,
                                                                        capsys):
    from PIL import Image

    result = automl_ft.tune(image_folder, tmp_path / "run", space=tiny_image_space, trials=1)
    assert capsys.readouterr() == ("", "")
    model = automl_ft.load(result.model_dir)
    assert model.task == "image-classification" and model.labels == ["blue", "green", "red"]
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[::5]
    rows, _ = cli_predict(capsys, str(result.model_dir), *paths)
    by_path = model.predict(paths, as_dicts=True)
    assert [{k: v for k, v in r.items() if k != "input"} for r in by_path] == \
        [{k: v for k, v in r.items() if k != "input"} for r in rows]
    images = [Image.open(p) for p in paths]
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in images])
    for other in (model.predict(images, as_dicts=True), model.predict(arrays, as_dicts=True),
                  model.predict(list(arrays), as_dicts=True)):
        assert other == by_path
    assert model.predict(images[0], as_dicts=True) == by_path[:1]
    proba = model.predict_proba(paths)
    assert proba.idxmax(axis=1).tolist() == [r["label"] for r in rows]
    missing = model.predict([str(tmp_path / "nope.png")], as_dicts=True)[0]
    assert missing["error"].startswith("no image file")
    table = pd.DataFrame({"image": paths, "label": [Path(p).parent.name for p in paths]})
    scores = model.evaluate(table)
    assert scores["num_examples"] == len(paths)
    assert scores["accuracy"] == pytest.approx(np.mean([r["label"] == t for r, t in zip(rows, table["label"])]))
    with pytest.raises(UsageError, match="image model"):
        model.predict([3.5])


def test_errors_raise_and_print_nothing(tmp_path, text_csv, tiny_text_space, capsys, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(DataError):
        automl_ft.tune(tmp_path / "missing.csv", out)
    with pytest.raises(UsageError, match="--trials must be at least 1"):
        automl_ft.tune(text_csv, out, trials=0)
    with pytest.raises(UsageError, match="unknown option.*epochs"):
        automl_ft.tune(text_csv, out, epochs=3)
    with pytest.raises(UsageError, match="trials must be an integer"):
        automl_ft.tune(text_csv, out, trials="3")
    with pytest.raises(UsageError, match="timeout must be a finite number"):
        automl_ft.tune(text_csv, out, timeout=float("nan"))
    with pytest.raises(UsageError, match="backbones is empty"):
        automl_ft.tune(text_csv, out, backbones=" , ")
    with pytest.raises(UsageError, match="data must be a path"):
        automl_ft.tune(42, out)
    with pytest.raises(DataError, match="no rows"):
        automl_ft.tune(pd.DataFrame({"text": [], "label": []}), out)
    one_class = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": ["a"] * 30})
    with pytest.raises(UsageError):  # a bad option with a DataFrame: refused before its copy is written
        automl_ft.tune(one_class, out, trials=0)
    with pytest.raises(DataError):  # refused by the data checks: the copy is removed again
        automl_ft.tune(one_class, out)
    assert not (tmp_path / "run.data").exists()
    with pytest.raises(ModelDirError):
        automl_ft.load(tmp_path)
    assert not out.exists() and capsys.readouterr() == ("", "")

    from automl_ft.tasks import get_task
    from automl_ft.tasks.single_label import SingleLabel

    regression = get_task("regression").fit([], [1.0, 2.0, 4.0])
    with pytest.raises(UsageError, match="predicts values"):
        regression.probabilities(np.zeros((1, 1)))
    # A search where every trial diverges: SearchFailedError (the CLI's exit 1), with the reason.
    monkeypatch.setattr(SingleLabel, "loss", lambda self, **kw: lambda a, b: (a * float("nan")).sum())
    with pytest.raises(SearchFailedError, match="No trial completed.*diverged"):
        automl_ft.tune(text_csv, out, space=tiny_text_space, trials=1)
    assert capsys.readouterr() == ("", "")


def test_int8_option_and_export_int8(tmp_path, text_csv, tiny_text_space, capsys):
    """tune(int8=True) and `automl-ft export --int8` share quantize.add_int8: metrics.json gets its verdict."""
    run = tmp_path / "run"
    result = automl_ft.tune(text_csv, run, space=tiny_text_space, trials=1, int8=True)
    assert capsys.readouterr() == ("", "")
    verdict = result.metrics["int8"]
    assert verdict["usable"] in (True, False) and (result.model_dir / "model.int8.onnx").is_file()
    if verdict["usable"]:
        assert automl_ft.load(result.model_dir, int8=True).predict(["goal match"], as_dicts=True)[0]["label"]
    else:
        with pytest.raises(UsageError, match="not usable"):
            automl_ft.load(result.model_dir, int8=True)
    assert main(["export", str(run), "--out", str(tmp_path / "again"), "--int8"]) == 0
    err = capsys.readouterr().err
    assert "Exported trial 0 to" in err and "INT8 (dynamic" in err
    assert "int8" in json.loads((tmp_path / "again" / "metrics.json").read_text())


def test_load_predict_never_imports_torch(tmp_path, text_csv, tiny_text_space):
    result = automl_ft.tune(text_csv, tmp_path / "run", space=tiny_text_space, trials=1)
    code = f"""
import sys, automl_ft
model = automl_ft.load({str(result.model_dir)!r})
frame = model.predict(["goal match", "rain storm"])
assert list(frame["label"]) and model.predict_proba(["pizza"]).shape == (1, 3)
assert model.evaluate({str(text_csv)!r})["num_examples"] == 120
assert "torch" not in sys.modules, "torch imported"
print("ok", model.task)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "text-classification"], proc.stderr


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the Python API section has one python example"
    return blocks[0]


def test_readme_example_runs(tmp_path, tiny_text_space, monkeypatch, capsys):
    """The README's notebook example, as written, with the shared SMS table and search replaced by tiny ones."""
    data = tmp_path / "sms.csv"
    rows = [("free prize winner claim now call", "spam"), ("see you at lunch today", "ham")] * 30
    pd.DataFrame([(f"{t} {i}", label) for i, (t, label) in enumerate(rows)], columns=["text", "label"]).to_csv(
        data, index=False)
    code = readme_example()
    for name, value in (("DATA", repr(str(data))), ("OPTIONS", f"dict(trials=1, space={str(tiny_text_space)!r})")):
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, count=1, flags=re.MULTILINE)
        assert n == 1, f"the README example sets {name} on one line"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example, run as a user would
    model = namespace["model"]
    assert model.task == "text-classification" and model.labels == ["ham", "spam"]
    assert (tmp_path / "runs" / "sms" / "best" / "model.onnx").is_file()
    out = capsys.readouterr().out
    assert "val_accuracy" in out and "accuracy" in out  # what the example prints



def _imports(path: Path) -> set[str]:
    """automl_ft modules a file imports anywhere (top level or inside functions)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("automl_ft"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("automl_ft"))
    return out


def test_the_cli_layer_is_imported_by_nobody_and_tuning_does_not_import_back():
    """commands.py (the CLI's printing) is used by cli.py alone, and the engine's run modules form no circle:
    runs.py and quantize.py never import tuning.py (which imports them)."""
    package = ROOT / "automl_ft"
    for path in package.rglob("*.py"):
        if path.name != "cli.py":
            assert "automl_ft.commands" not in _imports(path), path
    for name in ("runs.py", "quantize.py", "console.py", "export.py", "predict.py"):
        assert not {m for m in _imports(package / name) if m.startswith(("automl_ft.tuning", "automl_ft.api"))}, name
