"""The run directory: everything a ``tune`` writes, and the record of which study it belongs to.

::

    RUN_DIR/run.json            study identity (data fingerprint, task, study name, storage without password),
                                and every command run against it
    RUN_DIR/data_summary.json   what the data cleaning kept and dropped
    RUN_DIR/study.db            the default Optuna storage (SQLite)
    RUN_DIR/trials/NNNN/        per-trial config.json, history.json, model.safetensors (best epoch), resume point
    RUN_DIR/best/               the exported best model

A RUN_DIR that holds another study, or files that are not a run, is never written to.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
from pathlib import Path
from typing import Any

from automl_ft.errors import UsageError

RUN_FILE = "run.json"
IDENTITY_KEYS = ("task", "data_fingerprint", "study", "storage")


def check_creatable(path: Path, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be made: under a file, or where we may not write."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == path:
        return
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file; pass a folder path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: no permission to write in {ancestor}; pass a folder you can write to")


def make_dir(path: Path, flag: str) -> Path:
    """``mkdir -p`` whose OS refusal (a read-only or virtual file system, a full disk) is a one-line usage error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create it ({e.strerror}); pass a folder you can write to") from None
    return path


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    def trial_dir(self, number: int) -> Path:
        return self.trials / f"{number:04d}"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def check_usable(self) -> dict[str, Any] | None:
        """Refuse a path that is a file or a foreign non-empty folder; return the existing identity, if any."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file; pass a folder for the run")
        check_creatable(self.path, "--out")
        if self.path.is_dir():
            if self.run_file.is_file():
                try:
                    return json.loads(self.run_file.read_text())
                except (OSError, json.JSONDecodeError):
                    raise UsageError(f"{self.run_file} is unreadable; pass a new --out or restore the file") from None
            if any(p for p in self.path.iterdir() if not p.name.startswith(".")):
                raise UsageError(f"--out {self.path} exists and is not an automl-ft run folder (no {RUN_FILE}); "
                                 "pass a new or empty folder")
        return None

    def claim(self, identity: dict[str, Any], command: str, existing: dict[str, Any] | None) -> dict[str, Any]:
        """Record (or confirm) that this folder holds the study ``identity`` and append the current command.

        Args:
            existing: what :meth:`check_usable` returned before this command wrote anything.

        Raises:
            UsageError: the folder holds a different study (other data, task, study name or storage).
        """
        if existing is not None:
            for key in IDENTITY_KEYS:
                if key in existing and existing.get(key) != identity.get(key):
                    raise UsageError(
                        f"--out {self.path} holds another study ({key} {existing.get(key)!r}, now "
                        f"{identity.get(key)!r}); pass a new --out, or the same data and study to resume it")
            record = existing
        else:
            record = {**identity, "created": _now()}
        record.update({k: v for k, v in identity.items() if k not in IDENTITY_KEYS})
        record.setdefault("commands", []).append(command)
        make_dir(self.path, "--out")
        write_json(self.run_file, record)
        return record

    def load(self) -> dict[str, Any]:
        if not self.run_file.is_file():
            raise UsageError(f"{self.path} is not an automl-ft run folder (no {RUN_FILE}); pass the --out of a tune")
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, json.JSONDecodeError):
            raise UsageError(f"{self.run_file} is unreadable; re-run tune into a new --out") from None


def format_command(argv: list[str]) -> str:
    """``automl-ft`` followed by the arguments as typed, shell-quoted, passwords in URLs masked (run.json, cards)."""
    from automl_ft.search.storage import redact_url

    return " ".join(shlex.quote(redact_url(a) if "://" in a else a) for a in ["automl-ft", *argv])


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
