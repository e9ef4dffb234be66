"""Run folders: portable (moved or copied, they keep working and a copy is its own run), any path works, outputs
never replace what a user owns, and a refused or failed tune leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import optuna
import pytest

from automl_ft.cli import main
from automl_ft.rundir import RunDir
from tests.conftest import make_text_rows, write_csv


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def trials_of(run: Path) -> int:
    record = json.loads((run / "run.json").read_text())
    storage = RunDir(run).storage_url(record["storage"])
    return len(optuna.load_study(study_name=record["study"], storage=storage).trials)


def test_a_copied_run_is_its_own_run_and_any_path_works(tmp_path, capsys, tiny_text_space):
    """Paths with ' ', 'é', '?', '#', '%': '?' once put study.db outside the run, 'é' was recorded URL-encoded so
    report/export could not find the study, and an absolute storage URL made a copy write into the original."""
    (tmp_path / "data ?#%é").mkdir()
    data = write_csv(tmp_path / "data ?#%é" / "t x.csv", make_text_rows(40))
    run = tmp_path / "runs ?#%é" / "a b"
    args = ["tune", str(data), "--space", str(tiny_text_space), "--trials", "2"]
    assert main([*args, "--out", str(run)]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["storage"] == "RUN_DIR/study.db" and (run / "study.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data ?#%é", "runs ?#%é", tiny_text_space.name])
    assert main(["report", str(run)]) == 0 and (run / "report" / "index.html").is_file()
    original = {name: digest(run / name) for name in ("study.db", "run.json")}

    copy = tmp_path / "copy é #?" / "c%20d"
    shutil.copytree(run, copy)
    assert main([*args[:-1], "3", "--out", str(copy)]) == 0  # resume the copy: one more trial, in the copy
    for _ in range(2):  # the second export replaces the first: an earlier export of the same run
        assert main(["export", str(copy), "--out", str(copy / "exported é")]) == 0
    assert main(["report", str(copy)]) == 0
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    for target in (tmp_path / "docs", run, copy / "trials"):  # once replaced wholesale (run: study.db and trials/)
        assert main(["export", str(copy), "--out", str(target)]) == 2
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious" and trials_of(copy) == 3
    for _ in range(2):
        assert main(["report", str(copy), "--out", str(tmp_path / "report ?é")]) == 0
    assert (copy / "exported é" / "model.onnx").is_file() and (tmp_path / "report ?é" / "index.html").is_file()
    assert trials_of(copy) == 3 and trials_of(run) == 2
    assert {name: digest(run / name) for name in original} == original
    capsys.readouterr()


def test_an_export_into_a_folder_of_the_users_is_refused_before_any_work(tmp_path, capsys):
    """`export --out DIR` replaced whatever DIR held; now DIR must be new, empty or an earlier export of the run."""
    from tests.test_cli_errors import snapshot

    run = tmp_path / "run"
    run.mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{run / 'study.db'}").add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    # An absolute URL of its own database, as run folders recorded it before storage became "RUN_DIR/study.db".
    (run / "run.json").write_text(json.dumps({"study": "s", "storage": f"sqlite:///{run / 'study.db'}", "created": "x",
                                              "data_fingerprint": "f", "data_source": str(tmp_path / "gone.csv")}))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("precious")
    other = tmp_path / "other-export"  # another run's export of the same study name
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"run": {"study": "s", "data_fingerprint": "f", "created": "y"},
                                                    "study": "s", "trial": 0}))
    for target in (docs, other, run, tmp_path):
        before = snapshot(tmp_path)
        assert main(["export", str(run), "--out", str(target)]) == 2
        assert "not an earlier output of this run" in capsys.readouterr().err
        assert snapshot(tmp_path) == before
    # New and empty folders pass the check (and then fail on the missing data, which says so).
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "new"):
        assert main(["export", str(run), "--out", str(target)]) == 2
        assert "no such file or folder" in capsys.readouterr().err


def test_a_failure_after_the_checks_leaves_no_run_behind(tmp_path, monkeypatch, capsys):
    """A failed --artifacts store left run.json and study.db; now the run folder this command made is removed."""
    from automl_ft.errors import UsageError
    from automl_ft.search import artifacts

    def refuse(option, run_dir):
        raise UsageError("--artifacts: the mount went away")

    monkeypatch.setattr(artifacts, "make_artifact_store", refuse)
    data = write_csv(tmp_path / "t.csv", make_text_rows(10))
    assert main(["tune", str(data), "--out", str(tmp_path / "run")]) == 2
    assert "mount went away" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()  # an empty folder of the user's stays, empty
    assert main(["tune", str(data), "--out", str(tmp_path / "empty")]) == 2
    assert list((tmp_path / "empty").iterdir()) == []


def test_demo_data_left_by_a_failed_demo_does_not_block_the_next_command(tmp_path):
    """A folder holding only the complete demo data set is still usable as a new run folder."""
    from automl_ft.data.demo import write_digits
    from automl_ft.errors import UsageError

    run = RunDir(tmp_path / "run")
    write_digits(run.demo_data)
    assert run.check_usable() is None
    half = tmp_path / "half"
    (half / "demo-data" / "3").mkdir(parents=True)  # not ours to complete or replace
    with pytest.raises(UsageError, match="not an automl-ft run folder"):
        RunDir(half).check_usable()
    with pytest.raises(UsageError, match="not a complete demo data set"):
        write_digits(half / "demo-data")
