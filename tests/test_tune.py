"""``automl-ft tune`` end to end on tiny models: search, resume, export, predict, kill -9 and Ctrl-C recovery."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from automl_ft.cli import main
from automl_ft.rundir import RunDir

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_study(run: Path) -> optuna.Study:
    record = json.loads((run / "run.json").read_text())
    return optuna.load_study(study_name=record["study"], storage=RunDir(run).storage_url(record["storage"]))


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_text_tune_export_predict_and_resume(tmp_path, text_csv, tiny_text_space, capsys):
    run = tmp_path / "run"
    args = ["tune", str(text_csv), "--out", str(run), "--space", str(tiny_text_space), "--trials", "3", "--seed", "1"]
    assert main(args) == 0
    study = load_study(run)
    assert states(study) == {"COMPLETE": 3}
    for t in study.trials:  # what the optimizer (and LoRA layers) cost; no GPU here, so no reference estimate
        kt = t.user_attrs["kernel_time"]
        assert kt["adamw_ms"] > 0 and kt["backend"]["adamw"] == "torch" and kt["reference_estimate_ms"] is None
        if t.user_attrs["config"]["adaptation"] == "lora":
            assert kt["lora_ms"] > 0 and kt["lora_calls"] > 0
    best = run / "best"
    for name in ("model.onnx", "labels.json", "preprocess.json", "tokenizer.json", "config.json", "metrics.json",
                 "model_card.md"):
        assert (best / name).is_file(), name
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["onnx"]["prediction_agreement"] == 1.0 and metrics["onnx"]["max_abs_logit_diff"] < 1e-3
    assert metrics["onnx"]["num_samples"] == metrics["test"]["num_examples"] == 12
    assert set(metrics["test"]) >= {"accuracy", "macro_precision", "macro_recall", "macro_f1", "confusion_matrix"}
    assert study.trials[metrics["trial"]].value == study.best_value
    card = (best / "model_card.md").read_text()
    for section in ("## Data", "## Chosen configuration", "## Search", "## Test metrics", "## ONNX check",
                    "## Made with", "torch==", "--trials 3"):
        assert section in card, section
    line = re.search(r"^- Trials: (.*)$", card, re.MULTILINE)[1]  # e.g. "2 complete, 1 pruned"
    assert {part.split()[1]: int(part.split()[0]) for part in line.split(", ")} == \
        Counter(t.state.name.lower() for t in study.trials)
    assert json.loads((run / "data_summary.json").read_text())["num_classes"] == 3

    capsys.readouterr()
    assert main(["predict", str(best), str(text_csv)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in lines] == list(range(120))
    assert all(r["label"] in ("food", "sports", "weather") and 0 < r["score"] <= 1 for r in lines)

    # The same command again: nothing to do, nothing repeated, the export is kept.
    mtime = (best / "model.onnx").stat().st_mtime
    assert main(args) == 0
    assert len(load_study(run).trials) == 3 and (best / "model.onnx").stat().st_mtime == mtime
    # A larger budget adds exactly the missing trials.
    assert main(args[:-4] + ["--trials", "4", "--seed", "1"]) == 0
    assert states(load_study(run)) == {"COMPLETE": 4}
    record = json.loads((run / "run.json").read_text())
    assert len(record["commands"]) == 3


def test_same_seed_same_trials(tmp_path, text_csv, tiny_text_space):
    """Same seed, same data, CPU: the same trial parameters and metrics, run after run."""
    results = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert main(["tune", str(text_csv), "--out", str(run), "--space", str(tiny_text_space), "--trials", "2"]) == 0
        results.append([(t.params, t.value, t.intermediate_values) for t in load_study(run).trials])
    assert results[0] == results[1]


def test_image_tune_and_predict_folder(tmp_path, image_folder, tiny_image_space, capsys):
    run = tmp_path / "run"
    assert main(["tune", str(image_folder), "--out", str(run), "--space", str(tiny_image_space), "--trials", "2"]) == 0
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert metrics["onnx"]["prediction_agreement"] == 1.0
    capsys.readouterr()
    assert main(["predict", str(run / "best"), str(image_folder / "red"), "--top-k", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(r["input"]).name for r in lines] == [f"{i:03d}.png" for i in range(12)]
    assert all(len(r["top_k"]) == 2 for r in lines)


def _tune_process(run: Path, data: Path, space: Path, trials: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # As from a terminal: a test run started in the background (`cmd &` in a script) passes SIGINT on ignored, and
    # Python then installs no KeyboardInterrupt handler, so Ctrl-C would do nothing to the child.
    # --cv off: these tests interrupt a trial between epochs and resume it there; a cross-validated trial (600 rows
    # would be one) restarts its folds instead
    return subprocess.Popen([sys.executable, "-m", "automl_ft", "tune", str(data), "--out", str(run), "--space",
                             str(space), "--trials", str(trials), "--cv", "off"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"tune ended early:\n{proc.stdout.read()}")
        if time.time() > end:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_mid_trial_then_resume(tmp_path, slow_text_setup):
    data, space = slow_text_setup
    run = tmp_path / "run"
    proc = _tune_process(run, data, space, trials=3)
    _wait_for(run / "trials" / "0001" / "last.json", proc)  # trial 1 finished an epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = time.time()
    study = load_study(run)
    assert [t.state.name for t in study.trials][:2] == ["COMPLETE", "RUNNING"]
    assert main(["tune", str(data), "--out", str(run), "--space", str(space), "--trials", "3", "--cv", "off"]) == 0
    study = load_study(run)
    by_state = states(study)
    assert by_state == {"COMPLETE": 3, "FAIL": 1}, by_state
    failed = study.trials[1]
    assert failed.state.name == "FAIL" and "worker died" in failed.user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].params == failed.params
    assert retry[0].user_attrs.get("resumed_from_epoch", 0) >= 1
    assert (run / "best" / "model.onnx").is_file()
    assert time.time() - killed_at < 600


@pytest.mark.slow
def test_ctrl_c_records_the_trial_and_the_same_command_resumes(tmp_path, slow_text_setup):
    data, space = slow_text_setup
    run = tmp_path / "run"
    proc = _tune_process(run, data, space, trials=2)
    _wait_for(run / "trials" / "0000" / "last.json", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "resumes from its last finished epoch" in out and "Traceback" not in out
    study = load_study(run)
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert study.trials[0].user_attrs["fail_reason"].startswith("interrupted")
    assert main(["tune", str(data), "--out", str(run), "--space", str(space), "--trials", "2", "--cv", "off"]) == 0
    study = load_study(run)
    assert states(study) == {"FAIL": 1, "COMPLETE": 2}
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].user_attrs.get("resumed_from_epoch", 0) >= 1


def test_latency_aware_search(tmp_path, text_csv, tiny_text_space, capsys):
    run = tmp_path / "run"
    args = ["tune", str(text_csv), "--out", str(run), "--space", str(tiny_text_space), "--trials", "3",
            "--objective", "accuracy,latency", "--latency-threads", "1"]
    assert main(args) == 0
    study = load_study(run)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        lat = t.user_attrs["latency"]
        assert t.values[1] == t.user_attrs["latency_ms"] == lat["median_ms"] > 0
        assert lat["threads"] == 1 and lat["batch_size"] == 1 and lat["repeats"] >= 30
        assert lat["median_ms"] <= lat["p90_ms"]
    card = (run / "best" / "model_card.md").read_text()
    assert "Pareto front" in card and "ms (onnxruntime, CPU, batch 1" in card
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    best = max(done, key=lambda t: t.values[0])
    assert metrics["val_metric"] == "val_accuracy" and metrics["val_score"] == best.values[0]
    assert metrics["latency"]["median_ms"] == best.values[1]

    # A latency limit picks the most accurate trial under it, and refuses when none qualifies.
    capsys.readouterr()
    assert main(["tune", str(text_csv), "--out", str(tmp_path / "tight"), "--space", str(tiny_text_space),
                 "--trials", "1", "--max-latency-ms", "0.0001", "--latency-threads", "1"]) == 1
    assert "No trial meets --max-latency-ms 0.0001" in capsys.readouterr().err
    assert not (tmp_path / "tight" / "best").exists()


def test_max_latency_picks_the_most_accurate_under_the_limit(tmp_path):
    from automl_ft.search.study import best_trial

    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, lat in [(0.9, 30.0), (0.8, 10.0), (0.85, 12.0), (0.7, 5.0)]:
        study.add_trial(optuna.create_trial(values=[acc, lat], user_attrs={"latency_ms": lat}))
    assert best_trial(study).values == [0.9, 30.0]
    assert best_trial(study, 12.0).values == [0.85, 12.0]
    assert best_trial(study, 6.0).values == [0.7, 5.0]
    assert best_trial(study, 1.0) is None
