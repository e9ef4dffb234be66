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


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_SECRET = re.compile(r"((?:password|passwd|pwd|sslpassword)=)([^&\s]*)", re.IGNORECASE)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``url`` starts and ends, read as widely as any parser could read it.

    A password may hold unescaped ``@``, ``:`` or ``/`` (``postgresql://u:pa/ss@wo@rd@host/db``), and drivers split
    such URLs in different places (SQLAlchemy takes ``pa/ss`` and a host ``wo@rd@host``). So the password is taken
    as everything from the first ``:`` after the user name to the *last* ``@``: masking too much is harmless,
    printing a fragment is not.
    """
    m = _SCHEME.search(url)
    if m is None:
        return None
    rest_start = m.end()
    if url.startswith("/", rest_start):  # no authority (sqlite:////path/a:b@c.db): no user, no password
        return None
    at = url.rfind("@", rest_start)
    if at < 0:
        return None
    colon = url.find(":", rest_start, at)
    if colon < 0:
        return None
    return colon + 1, at


def url_secrets(url: str | None) -> list[str]:
    """Every form in which the password of ``url`` could appear: as typed, percent-decoded, as SQLAlchemy reads it."""
    if not url:
        return []
    from urllib.parse import unquote

    found: list[str] = []
    span = _password_span(url)
    if span is not None:
        found.append(url[span[0]:span[1]])
    found += [m.group(2) for m in _QUERY_SECRET.finditer(url)]
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url).password
    except (ArgumentError, ValueError, TypeError):  # not a URL SQLAlchemy reads: the spans above are all there is
        parsed = None
    if parsed:
        found.append(str(parsed))
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s and s != "***"}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; anything else is left exactly as
    typed (no re-encoding: a path with ``é`` or a space is still that path). Also masks ``password=`` options."""
    span = _password_span(url)
    if span is not None:
        url = f"{url[:span[0]]}***{url[span[1]:]}"
    return _QUERY_SECRET.sub(r"\1***", url)


def redact_text(text: str, url: str | None) -> str:
    """Remove the password of ``url`` from any message (drivers echo connection strings, or pieces of a password
    they took for a host name, in their errors): no run of 3 or more of its characters survives."""
    text = " ".join(redact_url(w) if "://" in w else w for w in text.split(" "))
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
        for size in range(len(secret) - 1, 2, -1):  # a fragment: "wo@rd@host" when the parser split the password
            for i in range(len(secret) - size + 1):
                piece = secret[i:i + size]
                if piece in text:
                    text = text.replace(piece, "***")
    return text


def sqlite_url(path: Path) -> str:
    """A SQLite URL for ``path`` that any character a file system allows survives (``?``, ``#``, ``%``, ``é``,
    spaces, braces): SQLAlchemy percent-encodes the database part and decodes it again when it connects; braces
    are encoded too because Optuna runs ``str.format`` over the URL."""
    from sqlalchemy.engine import URL

    url = URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)
    return url.replace("{", "%7B").replace("}", "%7D")


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, decoded as SQLAlchemy decodes it; None for an in-memory database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or \
            parsed.query.get("mode") == "memory":
        return None
    if database.startswith("file:") and parsed.query.get("uri") == "true":
        from urllib.parse import unquote, urlsplit

        database = unquote(urlsplit(database).path)
    return Path(database).expanduser()


def check_storage_url(url: str, *, writable: bool = True, must_exist: bool = False, name: str | None = None) -> None:
    """Refuse, without connecting or writing anything, a storage URL that cannot keep a study: not a URL, SQLite in
    memory (the study would vanish with the process), a SQLite file in a missing folder, or one that is not
    writable (a read-only file, folder or file system), when the command will write to it.

    Args:
        name: how messages name the storage (default ``--storage URL``; tune's default is "the run's database").

    Raises:
        StorageError: with a one-line message that names the problem and the fix.
    """
    shown = redact_url(url)
    label = name or f"--storage {shown}"
    if not _SCHEME.match(url):
        raise StorageError(f"--storage {shown!r} is not a database URL; use sqlite:///PATH or "
                           "postgresql://USER:PASSWORD@HOST/DB")
    if not url.split("://", 1)[0].lower().startswith("sqlite"):
        return
    path = sqlite_path(url)
    if path is None:
        raise StorageError(f"{label}: an in-memory SQLite database keeps no study after the command ends; "
                           "use sqlite:///PATH/study.db or leave --storage out")
    if path.exists() and not path.is_file():
        raise StorageError(f"{label}: {path} is not a file; use sqlite:///PATH/study.db")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise StorageError(f"{label}: folder {folder} does not exist; create it or use another path")
    if must_exist and not path.is_file():
        raise StorageError(f"{label}: no study database there; pass the --storage the study ran on")
    if writable:
        # SQLite writes the database and, beside it, its journal: both the file and its folder must be writable.
        # os.access also says no for a read-only file system or an immutable file, even to root.
        if path.is_file() and not os.access(path, os.W_OK):
            raise StorageError(f"{label}: the database {path} is not writable; make it writable or use "
                               "another --out/--storage")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StorageError(f"{label}: the folder {folder} is not writable (SQLite writes its journal "
                               "there); make it writable or use another --out/--storage")


def make_storage(url: str, *, heartbeat: bool = True, must_exist: bool = False) -> Any:
    """An Optuna RDB storage with heartbeats and stale-trial retries.

    ``must_exist``: a SQLite file must be there already (reading a run must not leave an empty database behind).

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database cannot be reached.
    """
    import optuna
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    check_storage_url(url, writable=not must_exist, must_exist=must_exist)
    scheme = url.split("://", 1)[0].lower()
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
