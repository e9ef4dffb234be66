"""Bad input never crashes: one line naming the problem and the fix, exit code 2, earlier runs untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from automl_ft.cli import main
from tests.conftest import make_image_folder, make_text_rows, write_csv

SPACE_BASE = """
task: text-classification
backbones:
  minilm-l6: {max_length: 64}
adaptation:
  full: {lr: 1.0e-4}
"""


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """A run folder of another study, with files that must survive every failing command."""
    run = tmp_path / "earlier"
    (run / "best").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"task": "text-classification", "data_fingerprint": "0" * 16,
                                              "study": "other-study", "storage": "sqlite:///x.db", "commands": []}))
    (run / "best" / "model.onnx").write_bytes(b"not really a model")
    return run


SECRET = "Xq7/zK@Lm9:Rt"  # a password with unescaped '/', '@' and ':'; no fragment of it may be printed
_UNDO: list = []  # read-only flags a case set, lifted after the case (tmp_path must stay removable)


def read_only(path: Path) -> Path:
    """Make ``path`` not writable, even to root (the immutable flag; os.access honours it), or skip the case."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        _UNDO.append(lambda: path.chmod(mode))
        return path
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True,
                                                        check=False).returncode:
        pytest.skip("cannot make a file read-only for root here (no chattr +i)")
    _UNDO.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=False))
    return path


def fake_run(run: Path, data: Path, *, seed: int = 0, space_fingerprint: str | None = None) -> Path:
    """A run folder as tune leaves it for ``data`` (identity computed as tune computes it; no trials yet)."""
    from automl_ft.data import load_dataset
    from automl_ft.search.space import load_space
    from automl_ft.tuning import default_study_name

    d = load_dataset(data, seed=seed)
    space = load_space(None, d.task)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "task": d.task, "data_fingerprint": d.fingerprint, "study": default_study_name(d.source, d.fingerprint),
        "storage": "RUN_DIR/study.db", "data_source": d.source, "space_file": space.file,
        "space_fingerprint": space_fingerprint or space.fingerprint(), "seed": seed, "created": "2026-12-01",
        "commands": []}))
    return run


def case_inputs(tmp_path: Path, name: str, earlier: Path, study_run: Path) -> list[str]:
    """Arguments of one bad-input case (the files they need are created here)."""
    good_csv = write_csv(tmp_path / "good.csv", make_text_rows(10))
    out = ["--out", str(tmp_path / "run")]
    if name == "missing path":
        return ["tune", str(tmp_path / "nope"), *out]
    if name == "empty folder":
        (tmp_path / "empty").mkdir()
        return ["tune", str(tmp_path / "empty"), *out]
    if name == "one class":
        make_image_folder(tmp_path / "one", classes=["red"])
        return ["tune", str(tmp_path / "one"), *out]
    if name == "unknown file type":
        (tmp_path / "data.xlsx").write_bytes(b"PK\x03\x04")
        return ["tune", str(tmp_path / "data.xlsx"), *out]
    if name == "missing label column":
        return ["tune", str(good_csv), "--label-column", "category", *out]
    if name == "ambiguous columns":
        rows = [(t, y, "z") for t, y in make_text_rows(10)]
        return ["tune", str(write_csv(tmp_path / "amb.csv", rows, header=("body", "label", "extra"))), *out]
    if name == "non-utf8 text":
        (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,a\nthe,b\n".encode("latin-1"))
        return ["tune", str(tmp_path / "latin.csv"), *out]
    if name == "empty csv":
        (tmp_path / "empty.csv").write_text("")
        return ["tune", str(tmp_path / "empty.csv"), *out]
    if name == "empty texts":
        rows = [("", "a")] * 5 + [("x", "a"), ("y", "b")]
        return ["tune", str(write_csv(tmp_path / "e.csv", rows)), *out]
    if name == "test labels unseen":
        (tmp_path / "tt").mkdir()
        write_csv(tmp_path / "tt" / "train.csv", make_text_rows(10))
        write_csv(tmp_path / "tt" / "test.csv", [("new", "martian")])
        return ["tune", str(tmp_path / "tt"), *out]
    if name == "corrupt images":
        root = make_image_folder(tmp_path / "imgs", n_per_class=5)
        for i in range(3):
            (root / "red" / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
        (root / "green" / "zero.png").write_bytes(b"")
        return ["tune", str(root), *out]
    if name == "malformed yaml":
        (tmp_path / "s.yaml").write_text("task: [oops\n")
        return ["tune", str(good_csv), "--space", str(tmp_path / "s.yaml"), *out]
    if name == "unknown space key":
        (tmp_path / "s.yaml").write_text(SPACE_BASE + "learning_rate: 3\n")
        return ["tune", str(good_csv), "--space", str(tmp_path / "s.yaml"), *out]
    if name == "unknown backbone":
        return ["tune", str(good_csv), "--backbones", "not-a-real-net", *out]
    if name == "backbone of the other task":
        return ["tune", str(good_csv), "--backbones", "efficientnet-lite0", *out]
    if name == "bad storage url":
        return ["tune", str(good_csv), "--storage", "postgresql//user:pw@host/db", *out]
    if name == "unreachable storage":
        return ["tune", str(good_csv), "--storage", "postgresql://u:hunter2@127.0.0.1:1/db", *out]
    if name == "zero trials":
        return ["tune", str(good_csv), "--trials", "0", *out]
    if name == "negative timeout":
        return ["tune", str(good_csv), "--timeout", "-5", *out]
    if name == "test fraction above one half":
        return ["tune", str(good_csv), "--test-fraction", "0.7", *out]
    if name == "test fraction 0 on segmentation":
        return ["tune", str(good_csv), "--task", "image-segmentation", "--test-fraction", "0", *out]
    if name == "out is a file":
        (tmp_path / "file").write_text("x")
        return ["tune", str(good_csv), "--out", str(tmp_path / "file")]
    if name == "out is a foreign folder":
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "thesis.tex").write_text("precious")
        return ["tune", str(good_csv), "--out", str(tmp_path / "mine")]
    if name == "out under a file":
        (tmp_path / "notes.txt").write_text("x")
        return ["tune", str(good_csv), "--out", str(tmp_path / "notes.txt" / "run")]
    if name == "out cannot be created":  # /proc refuses new entries even to root
        return ["tune", str(good_csv), "--out", "/proc/automl-ft-run"]
    if name == "artifacts of another scheme":
        return ["tune", str(good_csv), "--artifacts", "ftp://host/ckpt", *out]
    if name == "artifacts under a missing mount":
        return ["tune", str(good_csv), "--artifacts", str(tmp_path / "mnt" / "shared"), *out]
    if name == "export: out under a file":
        (tmp_path / "notes.txt").write_text("x")
        return ["export", str(earlier), "--out", str(tmp_path / "notes.txt" / "best")]
    if name == "report: out under a file":
        (tmp_path / "notes.txt").write_text("x")
        return ["report", str(earlier), "--out", str(tmp_path / "notes.txt" / "report")]
    if name == "export: study database missing":
        return ["export", str(earlier)]
    if name == "out holds another study":
        return ["tune", str(good_csv), "--out", str(earlier)]
    if name == "column flags on images":
        return ["tune", str(make_image_folder(tmp_path / "i2")), "--text-column", "x", *out]
    if name == "cuda without a gpu":
        return ["tune", str(good_csv), "--device", "cuda", *out]
    if name == "unknown flag":
        return ["tune", str(good_csv), "--learning-rate", "3", *out]
    if name == "predict: not a model folder":
        return ["predict", str(tmp_path), str(good_csv)]
    if name == "export: not a run folder":
        return ["export", str(tmp_path)]
    if name == "report: not a run folder":
        return ["report", str(tmp_path)]
    if name == "export: out is a folder of documents":
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "thesis.tex").write_text("precious")
        return ["export", str(study_run), "--out", str(tmp_path / "docs")]
    if name == "export: out is the run folder itself":
        return ["export", str(study_run), "--out", str(study_run)]
    if name == "export: out is another run's export":
        return ["export", str(study_run), "--out", str(earlier / "best")]
    if name == "export: out inside the data folder":
        return ["export", str(study_run), "--out", str(tmp_path / "data" / "exported")]
    if name == "report: out is a folder of documents":
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "index.html").write_text("<p>my homepage</p>")
        return ["report", str(study_run), "--out", str(tmp_path / "docs")]
    if name == "report: out is the run's export":
        return ["report", str(study_run), "--out", str(study_run / "best")]
    if name == "report: out inside the data folder":
        return ["report", str(study_run), "--out", str(tmp_path / "data" / "red")]
    if name == "out inside the data folder":
        return ["tune", str(make_image_folder(tmp_path / "imgs")), "--out", str(tmp_path / "imgs" / "run")]
    if name == "data inside the run folder":
        run = fake_run(tmp_path / "r2", good_csv)
        return ["tune", str(write_csv(run / "more.csv", make_text_rows(10))), "--out", str(run)]
    if name == "in-memory storage":
        return ["tune", str(good_csv), "--storage", "sqlite://", *out]
    if name == "in-memory storage by name":
        return ["tune", str(good_csv), "--storage", "sqlite:///:memory:", *out]
    if name == "read-only database":
        db = tmp_path / "ro" / "study.db"
        db.parent.mkdir()
        optuna.create_study(storage=f"sqlite:///{db}", study_name="x")
        return ["tune", str(good_csv), "--storage", f"sqlite:///{read_only(db)}", *out]
    if name == "read-only storage folder":
        (tmp_path / "ro").mkdir()
        return ["tune", str(good_csv), "--storage", f"sqlite:///{read_only(tmp_path / 'ro')}/study.db", *out]
    if name == "password with '@' and '/' in the storage url":
        return ["tune", str(good_csv), "--storage", f"postgresql://user:{SECRET}@127.0.0.1:1/db", *out]
    if name == "demo: column flags":
        return ["tune", "--text-column", "body", *out]
    if name == "demo: space of the other task":
        (tmp_path / "s.yaml").write_text(SPACE_BASE)
        return ["tune", "--space", str(tmp_path / "s.yaml"), *out]
    if name == "demo: artifacts of another scheme":
        return ["tune", "--artifacts", "ftp://host/ckpt", *out]
    if name == "resume with only another seed":
        return ["tune", str(good_csv), "--seed", "1", "--out", str(fake_run(tmp_path / "r2", good_csv))]
    if name == "resume with only another seed, splits given":
        (tmp_path / "tv").mkdir()
        for split in ("train", "val", "test"):
            write_csv(tmp_path / "tv" / f"{split}.csv", make_text_rows(4, seed=len(split)))
        run = fake_run(tmp_path / "r2", tmp_path / "tv")
        return ["tune", str(tmp_path / "tv"), "--seed", "3", "--out", str(run)]
    if name == "resume with only another space":
        run = fake_run(tmp_path / "r2", good_csv, space_fingerprint="0" * 12)
        return ["tune", str(good_csv), "--out", str(run)]
    if name == "tune: best holds files of the user's":
        run = fake_run(tmp_path / "r2", good_csv)
        (run / "best").mkdir()
        (run / "best" / "notes.md").write_text("mine")
        return ["tune", str(good_csv), "--out", str(run)]
    if name == "resume in a read-only run folder":
        return ["tune", str(good_csv), "--out", str(read_only(fake_run(tmp_path / "r2", good_csv)))]
    if name == "bench: out is a file":
        (tmp_path / "results.txt").write_text("my numbers")
        return ["bench", "adamw", "--out", str(tmp_path / "results.txt")]
    if name == "bench: out under a file":
        (tmp_path / "results.txt").write_text("my numbers")
        return ["bench", "train", f"--out={tmp_path / 'results.txt' / 'bench'}"]
    raise AssertionError(name)


CASES = {
    "missing path": "no such file or folder",
    "empty folder": "folder is empty",
    "one class": "only 1 class",
    "unknown file type": "unknown file type '.xlsx'",
    "missing label column": "no column 'category'",
    "ambiguous columns": "no 'text' column and 2 candidates",
    "non-utf8 text": "not valid UTF-8",
    "empty csv": "the file is empty",
    "empty texts": "have an empty text",
    "test labels unseen": "absent from train",
    "corrupt images": "4 of 19 images cannot be read",
    "malformed yaml": "invalid YAML",
    "unknown space key": "learning_rate: unknown key",
    "unknown backbone": "unknown backbone 'not-a-real-net'",
    "backbone of the other task": "is for image data",
    "bad storage url": "is not a database URL",
    "unreachable storage": "cannot open it",
    "zero trials": "--trials must be at least 1",
    "negative timeout": "--timeout must be a positive number",
    "test fraction above one half": "--test-fraction must be between 0 and 0.5, got 0.7",
    "test fraction 0 on segmentation": "--test-fraction 0 does not apply to segmentation",
    "out is a file": "is a file",
    "out is a foreign folder": "is not an automl-ft run folder",
    "out under a file": "notes.txt is a file",
    "out cannot be created": "cannot create it",
    "artifacts of another scheme": "use a folder path or s3://",
    "artifacts under a missing mount": "its parent folder does not exist",
    "export: out under a file": "notes.txt is a file",
    "report: out under a file": "notes.txt is a file",
    "export: study database missing": "no study database there",
    "out holds another study": "holds another study",
    "column flags on images": "apply to tables only",
    "cuda without a gpu": "no CUDA device",
    "unknown flag": "unrecognized arguments: --learning-rate",
    "predict: not a model folder": "no model.onnx",
    "export: not a run folder": "not an automl-ft run folder",
    "report: not a run folder": "not an automl-ft run folder",
    # Nothing a user owns is overwritten; outputs never land in DATA (issue 10, section 2).
    "export: out is a folder of documents": "is not empty and not an earlier output of this run",
    "export: out is the run folder itself": "is not empty and not an earlier output of this run",
    "export: out is another run's export": "is not empty and not an earlier output of this run",
    "export: out inside the data folder": "is inside the data folder",
    "report: out is a folder of documents": "is not empty and not an earlier output of this run",
    "report: out is the run's export": "is not empty and not an earlier output of this run",
    "report: out inside the data folder": "is inside the data folder",
    "out inside the data folder": "is inside the data folder",
    "data inside the run folder": "is inside the run folder",
    "tune: best holds files of the user's": "holds files that are not an export of this run",
    # Nothing is written before every argument is checked (a failed demo left demo-data/ behind).
    "demo: column flags": "apply to tables only",
    "demo: space of the other task": "the space is for text data",
    "demo: artifacts of another scheme": "use a folder path or s3://",
    # Storage that cannot keep a study; passwords (issue 10, section 3).
    "in-memory storage": "in-memory SQLite database keeps no study",
    "in-memory storage by name": "in-memory SQLite database keeps no study",
    "read-only database": "is not writable",
    "read-only storage folder": "is not writable",
    "resume in a read-only run folder": "is not writable",
    "password with '@' and '/' in the storage url": "cannot open it",
    # A resume whose only change is the seed or the space says so (issue 10, section 4).
    "resume with only another seed": "was started with --seed 0, not 1, and only the seed changed",
    "resume with only another seed, splits given": "was started with --seed 0, not 3, and only the seed changed",
    "resume with only another space": "was started with another search space",
    "bench: out is a file": "results.txt is a file",  # refused before the benchmark runs, not after
    "bench: out under a file": "results.txt is a file",
}


@pytest.fixture
def study_run(tmp_path) -> Path:
    """A run folder with a study (one complete trial) and its export, made from the image folder tmp_path/data."""
    data = make_image_folder(tmp_path / "data", n_per_class=3)
    run = tmp_path / "study-run"
    (run / "best").mkdir(parents=True)
    study = optuna.create_study(study_name="real-study", storage=f"sqlite:///{run / 'study.db'}")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.9))
    record = {"task": "image-classification", "data_fingerprint": "1" * 16, "study": "real-study",
              "storage": "RUN_DIR/study.db", "data_source": str(data.resolve()), "created": "2026-12-01",
              "commands": []}
    (run / "run.json").write_text(json.dumps(record))
    run_id = {k: record[k] for k in ("study", "data_fingerprint", "created")}
    (run / "best" / "metrics.json").write_text(json.dumps({"run": run_id, "study": "real-study", "trial": 0}))
    (run / "best" / "model.onnx").write_bytes(b"an exported model")
    return run


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, earlier_run, study_run, name):
    import torch

    if name == "cuda without a gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    before = snapshot(earlier_run), snapshot(study_run)
    try:
        args = case_inputs(tmp_path, name, earlier_run, study_run)
        inputs = snapshot(tmp_path)  # the case's own files: a refused command changes none of them either
        with pytest.raises(SystemExit) if name == "unknown flag" else _nullcontext() as exit_info:
            rc = main(args)
        after = snapshot(tmp_path)
    finally:
        while _UNDO:
            _UNDO.pop()()
    if name == "unknown flag":
        rc = exit_info.value.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and CASES[name] in err, err
    assert "Traceback" not in err
    assert "hunter2" not in err  # passwords never leak into messages
    assert not [SECRET[i:i + 3] for i in range(len(SECRET) - 2) if SECRET[i:i + 3] in err], err
    assert (snapshot(earlier_run), snapshot(study_run)) == before
    assert after == inputs
    assert not Path("x.db").exists()  # the earlier run's relative sqlite:///x.db is not created by reading it
    assert not (tmp_path / "run").exists() or name in ("corrupt images",)  # nothing written for a refused run


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("args,match", [
    (["tune", "/definitely/missing", "--out", "/tmp/x"], "no such file or folder"),
    (["predict", "/definitely/missing", "x.csv"], "no such model folder"),
])
def test_console_script_exit_codes(args, match):
    """Through a real process: exit status 2, one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "automl_ft", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and match in proc.stderr and "Traceback" not in proc.stderr
