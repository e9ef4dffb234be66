"""``automl-ft report``: leaderboard, PNG plots and index.html, on studies built with optuna.create_trial.

The studies are made of fake trials (no training) in a tmp SQLite run folder: complete, pruned, failed and running
trials, single- and multi-objective, with 0, 1 and many complete trials. One test reports on a real tiny run.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from automl_ft.cli import main
from automl_ft.report import PLOTS, curve_trials, kernel_rows, report_rows
from automl_ft.rundir import write_json
from automl_ft.search.leaderboard import leaderboard

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["sports", "weather", "food"]
KERNEL_TIMES = {  # trial number -> user attr kernel_time
    0: {"lora_ms": 120.0, "adamw_ms": 30.0, "reference_estimate_ms": 400.0, "backend": "triton"},
    2: {"lora_ms": 80.0, "adamw_ms": 20.0, "reference_estimate_ms": None, "backend": "torch"},
}


def _history(accs: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "val_loss": 1.2 - a, "val_accuracy": a,
             "val_macro_f1": a - 0.01, "lr": 1e-4, "seconds": 3.0} for i, a in enumerate(accs)]


def _trial(number: int, state: TrialState, *, adaptation: str = "full", accs: list[float] | None = None,
           values: list[float] | None = None, kernels: bool = False, **attrs):
    lr = 1e-4 * (1 + number)
    params = {"adaptation": adaptation, f"{adaptation}.lr": lr, "batch_size": 16 * (1 + number % 2),
              "minilm-l6.freeze_depth": number % 3}
    dists = {"adaptation": CategoricalDistribution(["full", "lora"]),
             f"{adaptation}.lr": FloatDistribution(1e-5, 1e-2, log=True),
             "batch_size": CategoricalDistribution([16, 32]), "minilm-l6.freeze_depth": IntDistribution(0, 3)}
    config = {"backbone": "minilm-l6", "adaptation": adaptation, "lora_rank": 8 if adaptation == "lora" else None,
              "freeze_depth": number % 3, "lr": lr, "batch_size": params["batch_size"], "epochs": 3}
    user_attrs = {"config": config, "seconds": 60.0 * (number + 1), **attrs}
    if accs:
        user_attrs["history"] = _history(accs)
        user_attrs["best_epoch"] = accs.index(max(accs)) + 1
    if kernels and number in KERNEL_TIMES:
        user_attrs["kernel_time"] = KERNEL_TIMES[number]
    kwargs = {}
    if state == TrialState.COMPLETE:
        kwargs["values"] = values if values is not None else [max(accs)]
    return optuna.create_trial(state=state, params=params, distributions=dists, user_attrs=user_attrs,
                               intermediate_values={i + 1: a for i, a in enumerate(accs or [])}, **kwargs)


def _run_folder(tmp_path: Path, trials, *, directions=("maximize",), metric_names=None,
                best=True) -> tuple[Path, optuna.Study]:
    run = tmp_path / "run"
    run.mkdir()
    url = f"sqlite:///{run / 'study.db'}"
    study = optuna.create_study(study_name="fake-study", storage=url, directions=list(directions))
    if metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metric_names))
    study.add_trials(trials)
    write_json(run / "run.json", {"task": "text-classification", "study": "fake-study", "storage": url,
                                  "data_source": "texts.csv", "commands": ["automl-ft tune texts.csv --out run"]})
    if best:
        (run / "best").mkdir()
        matrix = [[9, 1, 0], [0, 7, 3], [1, 0, 9]]
        per_class = {name: {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": sum(matrix[i])}
                     for i, name in enumerate(LABELS)}
        write_json(run / "best" / "metrics.json", {"trial": 3, "test": {
            "accuracy": 25 / 30, "macro_f1": 0.83, "num_examples": 30, "confusion_matrix": matrix,
            "per_class": per_class}})
        write_json(run / "best" / "labels.json", LABELS)
    return run, study


class _Page(HTMLParser):
    """Image sources and table rows (cell texts) of the report page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _report(run: Path, capsys, *extra: str) -> tuple[str, _Page, str]:
    assert main(["report", str(run), *extra]) == 0
    out = capsys.readouterr().out
    page_path = Path(re.search(r"Report: (\S+index\.html)", out).group(1))
    text = page_path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    page = _Page()
    page.feed(text)
    return out, page, text


def _assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, (path, img.shape)


def _assert_images_match_page(report_dir: Path, page: _Page) -> set[str]:
    pngs = {p.name for p in report_dir.glob("*.png")}
    assert set(page.images) == pngs  # every image is shown, and no <img> points at a missing file
    assert all(not src.startswith(("/", "http")) for src in page.images)  # relative, no external assets
    for name in pngs:
        _assert_png(report_dir / name)
    return pngs


def _leaderboard_table(page: _Page) -> tuple[list[str], list[list[str]]]:
    table = next(t for t in page.tables if t and t[0][:2] == ["trial", "state"])
    return table[0], table[1:]


def test_single_objective_report_with_all_trial_states(tmp_path, capsys):
    trials = [
        _trial(0, TrialState.COMPLETE, accs=[0.70, 0.80, 0.78], kernels=True),
        _trial(1, TrialState.PRUNED, adaptation="lora", accs=[0.40], pruned_reason="pruned at epoch 1"),
        _trial(2, TrialState.COMPLETE, adaptation="lora", accs=[0.75, 0.85], kernels=True),
        _trial(3, TrialState.COMPLETE, accs=[0.80, 0.90, 0.9125]),
        _trial(4, TrialState.FAIL, fail_reason="RuntimeError: out of memory"),
        _trial(5, TrialState.COMPLETE, adaptation="lora", accs=[0.60]),
        _trial(6, TrialState.RUNNING, accs=[0.50]),
    ]
    run, study = _run_folder(tmp_path, trials)
    out, page, text = _report(run, capsys)

    report_dir = run / "report"
    pngs = _assert_images_match_page(report_dir, page)
    assert pngs == {"optimization_history.png", "param_importances.png", "confusion_matrix.png",
                    "learning_curves.png"}
    assert "single-objective" in text and "single-objective" in out  # why there is no Pareto front

    # the leaderboard, on the console and on the page, is the study's, best first
    expected = leaderboard(study)
    header, rows = _leaderboard_table(page)
    assert [int(r[0]) for r in rows] == [r["trial"] for r in expected] == [3, 2, 0, 5, 6, 1, 4]
    acc = header.index("val_accuracy")
    by_number = {t.number: t for t in study.trials}
    for r in rows:
        t = by_number[int(r[0])]
        assert r[1] == t.state.name.lower()
        if t.state == TrialState.COMPLETE:
            assert r[acc] == f"{100 * t.value:.2f}%"
            assert f"{100 * t.value:.2f}%" in out
    assert "91.25%" in out and "out of memory" in text
    assert "latency_ms" not in header and "latency_ms" not in out  # nothing was timed: no empty column

    # learning curves of the 3 best trials that have a history
    assert [t.number for t in curve_trials(study, expected)] == [3, 2, 0]

    # test metrics of the exported model, with class names
    assert "83.33%" in text and all(name in text for name in LABELS)

    # kernels: trial 0 saved 400 - (120 + 30) ms; trial 2 has no reference estimate
    kernels = next(t for t in page.tables if t and "saved_ms" in t[0])
    kh, krows = kernels[0], {int(r[0]): r for r in kernels[1:]}
    assert set(krows) == {0, 2}
    assert krows[0][kh.index("saved_ms")] == "250.0" and krows[0][kh.index("saved_pct")] == "62.5%"
    assert krows[2][kh.index("saved_ms")] == "" and krows[2][kh.index("backend")] == "torch"
    assert [k["saved_ms"] for k in kernel_rows(study)] == [250.0, None]
    assert out.rstrip().splitlines()[-1] == f"Report: {report_dir / 'index.html'}"


def test_multi_objective_report_has_pareto_front_and_latency_column(tmp_path, capsys):
    trials = [
        _trial(0, TrialState.COMPLETE, accs=[0.8, 0.9], values=[0.9, 12.5]),
        _trial(1, TrialState.COMPLETE, adaptation="lora", accs=[0.85], values=[0.85, 4.0]),
        _trial(2, TrialState.COMPLETE, accs=[0.7], values=[0.7, 20.0]),
        _trial(3, TrialState.FAIL, fail_reason="boom"),
        _trial(4, TrialState.PRUNED, accs=[0.3]),
    ]
    run, study = _run_folder(tmp_path, trials, directions=("maximize", "minimize"),
                             metric_names=("accuracy", "latency_ms"))
    out, page, _text = _report(run, capsys, "--out", str(tmp_path / "elsewhere"))
    assert not (run / "report").exists()
    pngs = _assert_images_match_page(tmp_path / "elsewhere", page)
    assert {"pareto_front.png", "optimization_history.png", "param_importances.png"} <= pngs

    _rows, columns = report_rows(study)
    assert "latency_ms" in columns
    header, table = _leaderboard_table(page)
    assert header == list(columns)
    assert [int(r[0]) for r in table] == [0, 1, 2, 4, 3]  # by accuracy, the first objective
    lat, acc = header.index("latency_ms"), header.index("val_accuracy")
    assert [(r[acc], r[lat]) for r in table[:3]] == [("90.00%", "12.50"), ("85.00%", "4.00"), ("70.00%", "20.00")]
    assert "latency_ms" in out and "12.50" in out


def test_no_complete_trial_skips_plots_with_notes(tmp_path, capsys):
    trials = [_trial(0, TrialState.FAIL, fail_reason="bad"), _trial(1, TrialState.RUNNING)]
    run, _ = _run_folder(tmp_path, trials, best=False)
    (run / "report").mkdir()
    (run / "report" / "param_importances.png").write_bytes(b"stale")  # from an earlier report
    out, page, text = _report(run, capsys)
    assert page.images == [] and not list((run / "report").glob("*.png"))
    assert text.count("Skipped:") == len(PLOTS)
    assert "no complete trial yet" in out and "no exported model" in out
    assert "Kernel time was not measured" in text and "not measured" in out
    _, rows = _leaderboard_table(page)
    assert [r[1] for r in rows] == ["running", "fail"]


def test_one_complete_trial_skips_importances_only(tmp_path, capsys):
    trials = [_trial(0, TrialState.COMPLETE, accs=[0.5, 0.6]), _trial(1, TrialState.PRUNED, accs=[0.2])]
    run, _ = _run_folder(tmp_path, trials)
    _out, page, text = _report(run, capsys)
    pngs = _assert_images_match_page(run / "report", page)
    assert pngs == {"optimization_history.png", "confusion_matrix.png", "learning_curves.png"}
    assert "needs at least 2 complete trials, the study has 1" in text


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p / "missing"], ids=["not-a-run", "missing"])
def test_not_a_run_folder_is_one_line_exit_2(tmp_path, make):
    (tmp_path / "some.txt").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "automl_ft", "report", str(make(tmp_path))],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not an automl-ft run folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_report_on_a_real_tiny_run(tmp_path, capsys, text_csv, tiny_text_space):
    """A real tune (2-layer BERT, 2 trials, ~20 s): the objective's own attrs feed every plot."""
    run = tmp_path / "real"
    assert main(["tune", str(text_csv), "--out", str(run), "--space", str(tiny_text_space), "--trials", "2"]) == 0
    capsys.readouterr()
    _out, page, _text = _report(run, capsys)
    pngs = _assert_images_match_page(run / "report", page)
    assert {"optimization_history.png", "confusion_matrix.png", "learning_curves.png"} <= pngs
    study = optuna.load_study(study_name=json.loads((run / "run.json").read_text())["study"],
                              storage=f"sqlite:///{run / 'study.db'}")
    _, rows = _leaderboard_table(page)
    for r in rows:
        t = study.trials[int(r[0])]
        if t.state == TrialState.COMPLETE:
            assert r[8] == f"{100 * t.value:.2f}%" and not math.isnan(t.value)


def test_a_dead_workers_trial_has_no_duration():
    """A trial failed for a dead worker is closed when someone notices, not when it stopped: no minutes for it."""
    import datetime

    from automl_ft.search.leaderboard import trial_row

    start = datetime.datetime(2026, 11, 25, 12, 0)
    common = {"params": {}, "distributions": {}, "intermediate_values": {}, "system_attrs": {}, "trial_id": 0,
              "datetime_start": start, "datetime_complete": start + datetime.timedelta(minutes=49)}
    dead = optuna.trial.FrozenTrial(number=5, state=TrialState.FAIL, value=None,
                                    user_attrs={"fail_reason": "worker died (process gone)"}, **common)
    done = optuna.trial.FrozenTrial(number=6, state=TrialState.COMPLETE, value=0.9, user_attrs={}, **common)
    assert trial_row(dead)["minutes"] is None and trial_row(dead)["note"] == "worker died (process gone)"
    assert trial_row(done)["minutes"] == pytest.approx(49.0)
