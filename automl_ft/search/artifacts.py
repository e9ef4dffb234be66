"""Trial checkpoints in Optuna's artifact store, so any worker can resume, evaluate or export any trial.

The store is a :class:`optuna.artifacts.FileSystemArtifactStore` under ``RUN_DIR/artifacts`` by default, or under
``--artifacts PATH`` (a folder every worker mounts), or an S3 bucket (``--artifacts s3://bucket/prefix``, through
Optuna's ``Boto3ArtifactStore``). Which files belong to a trial is recorded in the trial's user attributes:

- ``artifacts``: ``{file name: artifact id}`` of the finished trial (best weights, config, history, PEFT adapter);
- ``resume_artifacts``: the last per-epoch resume point while the trial runs, uploaded only when the store is
  shared (a retry may run on another machine); removed when the trial ends.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from automl_ft.errors import UsageError
from automl_ft.rundir import check_creatable, make_dir
from automl_ft.train import CONFIG_FILE, HISTORY_FILE, MODEL_FILE, PEFT_DIR, RESUME_META, RESUME_WEIGHTS

RESULT_FILES = (MODEL_FILE, CONFIG_FILE, HISTORY_FILE)
RESUME_FILES = (RESUME_WEIGHTS, RESUME_META, MODEL_FILE)


def check_artifacts_option(option: str | None) -> None:
    """Refuse a bad ``--artifacts`` before anything is written: a missing boto3 or bucket, another URL scheme, or a
    folder whose parent does not exist (a shared mount that is not mounted must not become a local folder)."""
    if not option:
        return
    if option.startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise UsageError("--artifacts s3://... needs boto3; pip install boto3") from None
        if not option[5:].partition("/")[0]:
            raise UsageError(f"--artifacts {option}: no bucket; use s3://BUCKET[/PREFIX]")
        return
    if "://" in option:
        raise UsageError(f"--artifacts {option}: use a folder path or s3://BUCKET[/PREFIX]")
    path = Path(option).expanduser().resolve()
    if not path.parent.is_dir():
        raise UsageError(f"--artifacts {path}: its parent folder does not exist; create it or use another path")
    check_creatable(path, "--artifacts")


def make_artifact_store(option: str | None, run_dir: Path) -> tuple[Any, str, bool]:
    """The store, a description for logs, and whether it is shared beyond this run folder."""
    from optuna.artifacts import FileSystemArtifactStore

    check_artifacts_option(option)
    if option and option.startswith("s3://"):
        import boto3
        from optuna.artifacts import Boto3ArtifactStore

        bucket, _, prefix = option[5:].partition("/")
        store = Boto3ArtifactStore(bucket, client=boto3.client("s3"))
        if prefix:
            store = _Prefixed(store, prefix.rstrip("/") + "/")
        return store, option, True
    path = Path(option).expanduser().resolve() if option else run_dir / "artifacts"
    make_dir(path, "--artifacts")
    return FileSystemArtifactStore(str(path)), str(path), option is not None


class _Prefixed:
    """An artifact store view that keeps every id under a key prefix (S3 folders)."""

    def __init__(self, inner: Any, prefix: str):
        self.inner, self.prefix = inner, prefix

    def open_reader(self, artifact_id: str):
        return self.inner.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self.inner.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.prefix + artifact_id)


class TrialArtifacts:
    """Upload and fetch a trial's files through the artifact store."""

    def __init__(self, store: Any, storage: Any, *, shared: bool):
        self.store = store
        self.storage = storage
        self.shared = shared

    def _upload(self, trial: Any, workdir: Path, names: tuple[str, ...]) -> dict[str, str]:
        from optuna.artifacts import upload_artifact

        ids: dict[str, str] = {}
        for name in names:
            path = workdir / name
            if path.is_file():
                ids[name] = upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                                            storage=self.storage)
        peft = workdir / PEFT_DIR
        if names is RESULT_FILES and peft.is_dir():
            for path in sorted(peft.iterdir()):
                if path.is_file():
                    ids[f"{PEFT_DIR}/{path.name}"] = upload_artifact(
                        artifact_store=self.store, file_path=str(path), study_or_trial=trial, storage=self.storage)
        return ids

    def upload_result(self, trial: Any, workdir: Path) -> None:
        """After a trial completes: its best weights, config, history and PEFT adapter."""
        trial.set_user_attr("artifacts", self._upload(trial, workdir, RESULT_FILES))
        self.drop_resume(trial)

    def upload_resume(self, trial: Any, workdir: Path) -> None:
        """After each epoch, when the store is shared: the resume point, replacing the previous one."""
        if not self.shared:
            return
        old = dict(trial.user_attrs.get("resume_artifacts") or {})
        trial.set_user_attr("resume_artifacts", self._upload(trial, workdir, RESUME_FILES))
        self._remove(old)

    def drop_resume(self, trial: Any) -> None:
        old = dict(trial.user_attrs.get("resume_artifacts") or {})
        if old:
            trial.set_user_attr("resume_artifacts", {})
            self._remove(old)

    def _remove(self, ids: dict[str, str]) -> None:
        for artifact_id in ids.values():
            try:
                self.store.remove(artifact_id)
            except Exception:  # already gone (another worker cleaned up): nothing to keep
                pass

    def _download(self, ids: dict[str, str], dest: Path) -> bool:
        from optuna.artifacts import download_artifact

        dest.mkdir(parents=True, exist_ok=True)
        try:
            for name, artifact_id in ids.items():
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".download")
                tmp.unlink(missing_ok=True)
                download_artifact(artifact_store=self.store, file_path=str(tmp), artifact_id=artifact_id)
                tmp.replace(target)
        except Exception:
            return False
        return True

    def fetch_result(self, frozen_trial: Any, dest: Path) -> bool:
        """Make ``dest`` hold the trial's result files (for export on a machine that did not train it)."""
        ids = frozen_trial.user_attrs.get("artifacts") or {}
        return bool(ids) and MODEL_FILE in ids and self._download(ids, dest)

    def fetch_resume(self, frozen_trial: Any) -> Path | None:
        """Download the resume point of a trial that ran elsewhere into a fresh temporary folder."""
        ids = frozen_trial.user_attrs.get("resume_artifacts") or {}
        if RESUME_META not in ids:
            return None
        dest = Path(tempfile.mkdtemp(prefix=f"automl-ft-resume-{frozen_trial.number}-"))
        if self._download(ids, dest):
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        return None
