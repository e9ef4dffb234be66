"""The run directory: everything a ``tune`` writes, and the record of which study it belongs to.

::

    RUN_DIR/run.json            study identity (data fingerprint, task, study name, storage without password),
                                and every command run against it
    RUN_DIR/data_summary.json   what the data cleaning kept and dropped
    RUN_DIR/study.db            the default Optuna storage (SQLite)
    RUN_DIR/trials/NNNN/        per-trial config.json, history.json, model.safetensors (best epoch), resume point
    RUN_DIR/best/               the exported best model (metrics.json names the run that wrote it)
    RUN_DIR/report/             automl-ft report's page and plots (.automl-ft-report.json names the run)
    RUN_DIR/artifacts/          the default trial artifact store
    RUN_DIR/demo-data/          the embedded demo's images (tune without DATA)

A RUN_DIR that holds another study, or files that are not a run, is never written to; an export or report
``--out`` is written only when it is new, empty or an earlier output of the same run. Paths inside the run folder
are recorded relative to it (``RUN_DIR/study.db``), so a folder that is moved or copied keeps working, and a copy
is its own run: it never writes to the original's database.

Every file name of a run folder and of an exported model folder is defined here; other modules import the names.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from automl_ft.errors import UsageError

RUN_FILE = "run.json"
DATA_SUMMARY_FILE = "data_summary.json"
DB_FILE = "study.db"
TRIALS_DIR = "trials"
BEST_DIR = "best"
REPORT_DIR = "report"
ARTIFACTS_DIR = "artifacts"
DEMO_DIR = "demo-data"
# Written into a report folder, naming the run it belongs to: a later report of the same run may replace it, nothing
# else may. (An export folder is recognised by the "run" entry of its metrics.json.)
REPORT_MARKER = ".automl-ft-report.json"
# Recorded in run.json instead of an absolute path for anything inside the run folder (the default storage
# "RUN_DIR/study.db", the demo's data): the folder can move, and a copy resolves to its own files.
IN_RUN = "RUN_DIR/"
# The exported model folder (RUN_DIR/best, export --out): see export.py for what each file holds.
ONNX_FILE = "model.onnx"
TORCH_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "model_card.md"
# The Hugging Face formats of the model (hf_format.py): save_pretrained + tokenizer, or timm's folder.
HF_DIR = "hf"
IDENTITY_KEYS = ("task", "data_fingerprint", "study", "storage", "cv")
# What names one run across commands (and across copies of its folder): export and report folders carry it.
RUN_ID_KEYS = ("study", "data_fingerprint", "created")


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


def is_inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies under it (both resolved, so symlinks and ``..`` cannot hide it)."""
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def check_output_dir(path: Path, flag: str, owned: Callable[[Path], bool]) -> None:
    """Refuse, before any work, an output folder that holds something of the user's.

    A folder is written only when it is new, empty, or ``owned(path)`` (an earlier output of the same run, which is
    then replaced). Anything else (a folder of documents, another run's model, a run folder) is refused: exit 2.
    """
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; pass a new or empty folder")
    check_creatable(path, flag)
    if path.is_dir() and any(path.iterdir()) and not owned(path):
        raise UsageError(f"{flag} {path} is not empty and not an earlier output of this run; pass a new or empty "
                         "folder (nothing in it was changed)")


def check_not_in_data(path: Path, flag: str, data_source: str | Path | None) -> None:
    """Refuse an output folder inside the data folder: its files would be read as data next time (report PNGs
    become a new image class)."""
    if not data_source:
        return
    data = Path(data_source).expanduser().resolve()
    if data.is_dir() and is_inside(path, data):
        raise UsageError(f"{flag} {path} is inside the data folder {data}; its files would become data; pass a "
                         "folder outside it")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()

    @property
    def trials(self) -> Path:
        return self.path / TRIALS_DIR

    def trial_dir(self, number: int) -> Path:
        return self.trials / f"{number:04d}"

    @property
    def best(self) -> Path:
        return self.path / BEST_DIR

    @property
    def report(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def data_summary(self) -> Path:
        return self.path / DATA_SUMMARY_FILE

    @property
    def demo_data(self) -> Path:
        return self.path / DEMO_DIR

    @property
    def database(self) -> Path:
        return self.path / DB_FILE

    def record_path(self, path: str | Path) -> str:
        """How run.json records a path: ``RUN_DIR/...`` inside this folder (it moves with it), absolute outside."""
        path = Path(path).expanduser().resolve()
        if is_inside(path, self.path):
            return IN_RUN + path.relative_to(self.path).as_posix()
        return str(path)

    def resolve_path(self, recorded: str) -> str:
        """The inverse of :meth:`record_path` (absolute paths of older run folders are returned as they are)."""
        if recorded.startswith(IN_RUN):
            return str(self.path / recorded[len(IN_RUN):])
        return recorded

    @property
    def default_storage(self) -> str:
        """The storage run.json records when --storage is not given: the run's own SQLite file, wherever it is."""
        return IN_RUN + DB_FILE

    def storage_url(self, recorded: str) -> str:
        """The URL to open for the storage run.json records: ``RUN_DIR/study.db`` becomes this folder's database,
        built so that any character of its path survives (``?``, ``#``, ``%``, ``é``, spaces)."""
        from automl_ft.search.storage import sqlite_url

        if recorded.startswith(IN_RUN):
            return sqlite_url(Path(self.resolve_path(recorded)))
        return recorded

    def normalize_storage(self, recorded: str | None) -> str | None:
        """Older run folders recorded their own database as an absolute ``sqlite:///`` URL: that is the default."""
        from automl_ft.search.storage import sqlite_path

        if recorded and recorded.startswith("sqlite") and "://" in recorded:
            path = sqlite_path(recorded)
            if path is not None and path.is_absolute() and path.resolve() == self.database:
                return self.default_storage
        return recorded

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
                    record = json.loads(self.run_file.read_text())
                except (OSError, json.JSONDecodeError):
                    raise UsageError(f"{self.run_file} is unreadable; pass a new --out or restore the file") from None
                return self._normalize(record)
            if any(p for p in self.path.iterdir() if not p.name.startswith(".") and not self._is_demo_data(p)):
                raise UsageError(f"--out {self.path} exists and is not an automl-ft run folder (no {RUN_FILE}); "
                                 "pass a new or empty folder")
        return None

    def _is_demo_data(self, p: Path) -> bool:
        from automl_ft.data.demo import is_demo_folder

        return p.name == DEMO_DIR and is_demo_folder(p)

    def run_id(self, record: dict[str, Any]) -> dict[str, Any]:
        """What export and report folders record to say which run wrote them."""
        return {k: record.get(k) for k in RUN_ID_KEYS}

    def owns_export(self, record: dict[str, Any], folder: Path) -> bool:
        """``folder`` is an earlier export of this run (its metrics.json names the run; an export written before
        exports named their run is recognised by its study, inside this run folder)."""
        try:
            metrics = json.loads((folder / METRICS_FILE).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(metrics, dict):
            return False
        if "run" in metrics:
            return metrics["run"] == self.run_id(record)
        return metrics.get("study") == record.get("study") and is_inside(folder, self.path)

    def owns_report(self, record: dict[str, Any], folder: Path) -> bool:
        """``folder`` is an earlier report of this run (its marker names the run; a report written before reports
        carried one is recognised as RUN_DIR/report holding only its page and plots)."""
        try:
            marker = json.loads((folder / REPORT_MARKER).read_text())
        except (OSError, ValueError):
            marker = None
        if marker is not None:
            return isinstance(marker, dict) and marker.get("run") == self.run_id(record)
        return folder.resolve() == self.report and all(
            p.is_file() and (p.suffix in (".html", ".png") or p.name.startswith(".")) for p in folder.iterdir())

    def check_identity(self, identity: dict[str, Any], existing: dict[str, Any] | None,
                       fingerprint_with_seed: Callable[[int], str] | None = None) -> None:
        """Refuse to resume ``existing`` as ``identity`` when it is another study, saying exactly what changed: only
        the seed, only the search space, or the data, task, study name or storage.

        Args:
            fingerprint_with_seed: the data's fingerprint under another seed (the seed makes the split, so a new seed
                alone gives new data fingerprint); used to tell "only --seed changed" from "the data changed".
        """
        if existing is None:
            return
        old_seed, new_seed = existing.get("seed"), identity.get("seed")
        differs = [k for k in IDENTITY_KEYS if k in existing and existing.get(k) != identity.get(k)]
        seed_changed = old_seed is not None and new_seed is not None and old_seed != new_seed
        if seed_changed and set(differs) <= {"data_fingerprint", "study"} and \
                existing.get("data_source") == identity.get("data_source"):
            only_seed = not differs or (
                fingerprint_with_seed is not None and fingerprint_with_seed(old_seed) == existing.get(
                    "data_fingerprint"))
            if only_seed:
                raise UsageError(
                    f"--out {self.path} was started with --seed {old_seed}, not {new_seed}, and only the seed changed "
                    f"(it sets the data split, the sampler and training); pass --seed {old_seed} to resume, or a new "
                    f"--out for seed {new_seed}")
        if differs:
            key = differs[0]
            raise UsageError(
                f"--out {self.path} holds another study ({key} {existing.get(key)!r}, now {identity.get(key)!r}); "
                "pass a new --out, or the same data and study to resume it")
        old_space, new_space = existing.get("space_fingerprint"), identity.get("space_fingerprint")
        if old_space and new_space and old_space != new_space:
            raise UsageError(
                f"--out {self.path} was started with another search space ({existing.get('space_file')}, "
                f"fingerprint {old_space}; now {identity.get('space_file')}, {new_space}) and only the space changed "
                "(--space or --backbones); pass the original to resume, or a new --out for the new space")

    def claim(self, identity: dict[str, Any], command: str, existing: dict[str, Any] | None) -> dict[str, Any]:
        """Record (or confirm) that this folder holds the study ``identity`` and append the current command.

        Args:
            existing: what :meth:`check_usable` returned before this command wrote anything.

        Raises:
            UsageError: the folder holds a different study (other data, task, study name or storage).
        """
        self.check_identity(identity, existing)
        if existing is not None:
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
            record = json.loads(self.run_file.read_text())
        except (OSError, json.JSONDecodeError):
            raise UsageError(f"{self.run_file} is unreadable; re-run tune into a new --out") from None
        if not isinstance(record, dict) or "study" not in record:
            raise UsageError(f"{self.run_file} is not an automl-ft run record; re-run tune into a new --out")
        return self._normalize(record)

    def _normalize(self, record: Any) -> Any:
        """Read a record of an older version as this one writes it: paths inside the run folder as RUN_DIR/..."""
        if not isinstance(record, dict):
            return record
        if "storage" in record:
            record["storage"] = self.normalize_storage(record["storage"])
        source = record.get("data_source")
        if isinstance(source, str) and not source.startswith(IN_RUN) and Path(source).is_absolute() and \
                is_inside(Path(source), self.path):
            record["data_source"] = self.record_path(source)
        return record


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
