"""Many workers on one PostgreSQL study: sharing, a killed worker, and passwords that never leak.

``.ci/run`` starts a throwaway PostgreSQL server (``.ci/postgres.sh``) and sets ``AUTOML_FT_TEST_POSTGRES``;
elsewhere these tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

URL = os.environ.get("AUTOML_FT_TEST_POSTGRES")
PASSWORD = "s3cret-Pw"


def _reachable(url: str | None) -> str | None:
    if not url:
        return "AUTOML_FT_TEST_POSTGRES is not set (.ci/run starts a PostgreSQL server and sets it)"
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3}).connect():
            return None
    except Exception as e:  # noqa: BLE001 - any failure means: no server to test against
        return f"PostgreSQL at AUTOML_FT_TEST_POSTGRES is not reachable ({type(e).__name__})"


pytestmark = [pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.skipif(_reachable(URL) is not None, reason=str(_reachable(URL)))]

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "AUTOML_FT_HEARTBEAT_INTERVAL": "2", "AUTOML_FT_GRACE_PERIOD": "8"}


@pytest.fixture
def setup(tmp_path, slow_text_setup):
    data, space = slow_text_setup
    return data, space, f"dist-{uuid.uuid4().hex[:8]}", tmp_path / "shared-artifacts"


def worker(tmp_path: Path, name: str, data: Path, space: Path, study: str, artifacts: Path, trials: int):
    log = (tmp_path / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "automl_ft", "tune", str(data), "--out", str(tmp_path / name), "--space", str(space),
         "--storage", URL, "--study", study, "--artifacts", str(artifacts), "--trials", str(trials),
         "--cv", "off"],  # resumed mid-trial between epochs: a cross-validated trial (600 rows) restarts instead
        stdout=log, stderr=subprocess.STDOUT, env=ENV)
    proc.log_path = tmp_path / f"{name}.log"  # type: ignore[attr-defined]
    return proc


def study_of(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=URL)


def no_password_anywhere(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix not in (".safetensors", ".onnx"):
                assert PASSWORD not in path.read_text(errors="ignore"), path


def test_two_workers_share_one_study(tmp_path, setup):
    data, space, study_name, artifacts = setup
    artifacts.mkdir()
    procs = [worker(tmp_path, f"w{i}", data, space, study_name, artifacts, trials=4) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.log_path.read_text()
    study = study_of(study_name)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4  # none lost, none extra
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert pids == {p.pid for p in procs}  # both workers took trials
    # Both workers run with --seed 0: each trial's sampler is seeded from (seed, trial number), so they do not draw
    # the same configuration (trials 1 and 2 were identical when each worker's sampler was seeded once).
    configs = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(configs)) == len(configs), [t.params for t in trials]
    assert all(t.user_attrs.get("artifacts", {}).get("model.safetensors") for t in trials)
    exported = [d for d in ("w0", "w1") if (tmp_path / d / "best" / "model.onnx").is_file()]
    assert len(exported) == 1  # exactly one worker exported the best trial
    assert f"export:{study.best_trial.number}" in study.user_attrs
    no_password_anywhere(tmp_path / "w0", tmp_path / "w1")
    for p in procs:
        assert PASSWORD not in p.log_path.read_text()


def test_killed_worker_is_retried_from_its_checkpoint(tmp_path, setup):
    data, space, study_name, artifacts = setup
    artifacts.mkdir()
    a = worker(tmp_path, "a", data, space, study_name, artifacts, trials=4)
    b = worker(tmp_path, "b", data, space, study_name, artifacts, trials=4)
    victim = None
    end = time.time() + 600
    while victim is None and time.time() < end:
        time.sleep(0.2)
        try:
            trials = study_of(study_name).trials
        except KeyError:
            continue
        for t in trials:
            if t.state.name == "RUNNING" and t.user_attrs.get("worker", {}).get("pid") == a.pid \
                    and t.user_attrs.get("resume_artifacts"):
                victim = t.number
    assert victim is not None, a.log_path.read_text()
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=30)
    killed_at = time.time()
    assert b.wait(timeout=900) == 0, b.log_path.read_text()
    study = study_of(study_name)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1, states
    assert study.trials[victim].state.name == "FAIL"
    retry = [t for t in study.trials if (t.user_attrs.get("retry_history") or [None])[-1] == victim]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == study.trials[victim].params
    assert retry[0].user_attrs.get("resumed_from_epoch", 0) >= 1
    assert retry[0].user_attrs["worker"]["pid"] == b.pid
    lost = retry[0].datetime_start.timestamp() - killed_at
    print(f"\nkilled trial {victim} at epoch {retry[0].user_attrs['resumed_from_epoch']}; "
          f"retry started {lost:.1f} s after the kill (grace period 8 s)")
    assert (tmp_path / "b" / "best" / "model.onnx").is_file()
