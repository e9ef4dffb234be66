"""Optuna storage: SQLite in the run directory by default, any RDB URL (PostgreSQL for many workers) on request.

Heartbeats are on for every RDB storage: a trial whose worker stops beating (kill -9, a lost machine) is marked
failed after the grace period and retried with the same parameters by Optuna's own retry callback.
Passwords never leave this module in clear: everything shown to users goes through :func:`redact_url`.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from automl_ft.errors import StorageError

# A worker beats every 20 s; after 120 s of silence its trial is stale. The grace period must exceed the longest
# pause of a live worker's heartbeat thread (a GIL-heavy step plus a slow shared database), so it is generous.
HEARTBEAT_INTERVAL = int(os.environ.get("AUTOML_FT_HEARTBEAT_INTERVAL", "20"))
GRACE_PERIOD = int(os.environ.get("AUTOML_FT_GRACE_PERIOD", "120"))  # tests shorten both through the environment


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (also inside longer text)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", url)


def redact_text(text: str, url: str | None) -> str:
    """Remove the password of ``url`` from any message (drivers echo connection strings in their errors)."""
    text = re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)
    if url:
        try:
            from sqlalchemy.engine import make_url

            password = make_url(url).password
        except Exception:
            password = None
        if password:
            text = text.replace(str(password), "***")
    return text


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


def make_storage(url: str, *, heartbeat: bool = True, must_exist: bool = False) -> Any:
    """An Optuna RDB storage with heartbeats and stale-trial retries.

    ``must_exist``: a SQLite file must be there already (reading a run must not leave an empty database behind).

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database cannot be reached.
    """
    import optuna
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+]*://", url):
        raise StorageError(f"--storage {redact_url(url)!r} is not a database URL; use sqlite:///PATH or "
                           "postgresql://USER:PASSWORD@HOST/DB")
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not Path(path).expanduser().resolve().parent.is_dir():
            raise StorageError(f"--storage {url}: folder {Path(path).parent} does not exist; create it or use another "
                               "path")
        if must_exist and path and path != ":memory:" and not Path(path).expanduser().is_file():
            raise StorageError(f"--storage {url}: no study database there; pass the --storage the study ran on")
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD}
        import inspect

        params = inspect.signature(optuna.storages.RDBStorage).parameters
        key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else \
            "failed_trial_callback"
        from .retry import retry_callback

        kwargs[key] = retry_callback()
    engine_kwargs: dict[str, Any] = {}
    if scheme.startswith("postgres"):
        # Fail in seconds, not minutes, when the server is unreachable; keep idle connections alive across trials.
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    elif scheme.startswith("sqlite"):
        # Several local workers share one SQLite file: wait for the lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        for attempt in range(6):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            except SQLAlchemyError as e:
                # Workers that start together on an empty database race to create Optuna's tables; the loser
                # sees a duplicate-key error and simply retries once the tables exist.
                text = str(e).lower()
                if attempt == 5 or not ("unique" in text or "already exists" in text or "duplicate" in text):
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")
    except (ArgumentError, ImportError, ModuleNotFoundError) as e:
        raise StorageError(f"--storage {redact_url(url)}: {redact_text(_first_line(e), url)}; check the URL scheme "
                           "(sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB) and its driver") from None
    except (SQLAlchemyError, OSError, ValueError) as e:
        raise StorageError(f"--storage {redact_url(url)}: cannot open it ({redact_text(_first_line(e), url)}); check "
                           "that the server runs and the URL is right") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    if msg.startswith("(") and len(lines) > 1 and len(msg) < 60:
        msg = f"{msg} {lines[1]}"
    return msg[:240]
