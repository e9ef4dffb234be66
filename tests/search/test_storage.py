"""Storage URLs: any path survives, studies that cannot be kept are refused, and no fragment of a password shows."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from automl_ft.cli import main
from automl_ft.errors import StorageError
from automl_ft.rundir import RunDir, format_command
from automl_ft.search.storage import (
    check_storage_url,
    make_storage,
    redact_text,
    redact_url,
    sqlite_path,
    sqlite_url,
)
from tests.conftest import make_text_rows, write_csv

NASTY_DIRS = ["a b", "q?x", "h#x", "p%41x", "é ü", "{x}", "x?y#z%20é {w}"]

# (url, password as the user meant it): unescaped '@', ':' and '/' in passwords, percent-escapes, query options.
SECRET_URLS = [
    ("postgresql://user:Xq7zKw9@127.0.0.1:1/db", "Xq7zKw9"),
    ("postgresql://user:Xq7/zK@Lm9@127.0.0.1:1/db", "Xq7/zK@Lm9"),
    ("postgresql://user:Xq7:zK:Lm9@127.0.0.1:1/db", "Xq7:zK:Lm9"),
    ("postgresql://user:Xq7@zK/Lm9@127.0.0.1:1/db", "Xq7@zK/Lm9"),
    ("postgresql://user:Xq7%40zK%2FLm9@127.0.0.1:1/db", "Xq7@zK/Lm9"),
    ("postgresql+psycopg2://user:Xq7/@/@zKL@127.0.0.1:1/db", "Xq7/@/@zKL"),
    ("postgresql://user:Xq7 zK Lm9@127.0.0.1:1/db", "Xq7 zK Lm9"),
    ("postgresql://127.0.0.1:1/db?user=u&password=Xq7zKLm9", "Xq7zKLm9"),
    ("mysql://user:Xq7zK@Lm9/path@127.0.0.1:1/db?charset=utf8", "Xq7zK@Lm9/path"),
]


def fragments(secret: str, size: int = 3) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def assert_no_fragment(text: str, secret: str) -> None:
    leaked = sorted(f for f in fragments(secret) if f in text)
    assert not leaked, f"password fragments {leaked} in {text!r}"


@pytest.mark.parametrize("name", NASTY_DIRS)
def test_sqlite_url_keeps_the_database_where_the_path_says(tmp_path, name):
    """'?' once cut the path short (the database landed outside the run folder), '%' and '{' were decoded or
    formatted away, and 'é' came back percent-encoded."""
    folder = tmp_path / name
    folder.mkdir()
    url = sqlite_url(folder / "study.db")
    assert sqlite_path(url) == folder / "study.db"
    optuna.create_study(storage=make_storage(url, heartbeat=False), study_name="s")
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted([name, "study.db"])


@pytest.mark.parametrize("url,password", SECRET_URLS)
def test_no_fragment_of_a_password_is_shown(url, password):
    shown = redact_url(url)
    assert_no_fragment(shown, password)
    assert "***" in shown
    assert_no_fragment(format_command(["tune", "d.csv", "--storage", url]), password)
    assert_no_fragment(format_command(["tune", "d.csv", f"--storage={url}"]), password)
    # Drivers echo the URL, or a piece of the password they took for a host name, in their messages.
    at = password.rfind("@")
    for message in (f"could not connect to {url}", f'could not translate host name "{password[at + 1:]}@127.0.0.1"',
                    f"password authentication failed: {password[:5]}", f"connection to {url[:40]} failed"):
        assert_no_fragment(redact_text(message, url), password)


@pytest.mark.parametrize("url", ["sqlite:////tmp/é x/study.db", "sqlite:///runs/a%20b.db", "postgresql://h/db",
                                 "postgresql://user@host/db", "sqlite:////tmp/a:b@c/study.db"])
def test_urls_without_a_password_are_shown_as_typed(url):
    """SQLAlchemy's re-rendering turned 'é' into '%C3%A9': the recorded URL then named another file."""
    assert redact_url(url) == url


@pytest.mark.parametrize("url,password", SECRET_URLS)
def test_tune_never_prints_a_password(tmp_path, capsys, url, password):
    data = write_csv(tmp_path / "t.csv", make_text_rows(10))
    assert main(["tune", str(data), "--storage", url, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert_no_fragment(err, password)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:x?mode=memory&uri=true"])
def test_in_memory_sqlite_is_refused(url):
    with pytest.raises(StorageError, match="in-memory"):
        check_storage_url(url)


def test_legacy_absolute_storage_of_the_run_itself_is_the_run_database(tmp_path):
    """Run folders written before storage was recorded relative to the run name their own database absolutely."""
    run = tmp_path / "r é"
    run.mkdir()
    for legacy in (f"sqlite:///{run / 'study.db'}", sqlite_url(run / "study.db")):  # as typed, or %-encoded
        (run / "run.json").write_text(json.dumps({"study": "s", "storage": legacy}))
        assert RunDir(run).load()["storage"] == "RUN_DIR/study.db"
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    (run / "run.json").write_text(json.dumps({"study": "s", "storage": elsewhere}))
    assert RunDir(run).load()["storage"] == elsewhere
    assert sqlite_path(RunDir(run).storage_url("RUN_DIR/study.db")) == Path(run / "study.db")
