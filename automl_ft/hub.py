"""``automl-ft push MODEL_DIR REPO_ID``: upload an exported model folder to the Hugging Face Hub.

The repository is laid out for the Hub's tools: the contents of ``hf/`` (when the export has one) at the root, so
``from_pretrained(REPO_ID)`` / ``timm.create_model("hf-hub:REPO_ID")`` find them, the model card as ``README.md``
(its YAML header is the Hub's metadata), and the rest of the export (``model.onnx``, ``labels.json``, ``task.json``,
``preprocess.json``, ...) under ``automl-ft/``, where ``automl-ft predict`` can use a download of it. Without
``hf/`` the export itself is the root.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from automl_ft.card import CARD_FILE
from automl_ft.errors import ModelDirError, UsageError
from automl_ft.rundir import HF_DIR, METRICS_FILE, ONNX_FILE

EXPORT_SUBDIR = "automl-ft"
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def stage(model_dir: Path, into: Path) -> list[str]:
    """Lay the export out for the Hub in ``into`` (hard links where possible); returns the relative file paths."""
    hf = model_dir / HF_DIR
    rest = into / EXPORT_SUBDIR if hf.is_dir() else into
    if hf.is_dir():
        _link_tree(hf, into)
    _link_tree(model_dir, rest, skip={HF_DIR})
    card = model_dir / CARD_FILE
    if card.is_file():
        shutil.copy2(card, into / "README.md")
    return sorted(str(p.relative_to(into)) for p in into.rglob("*") if p.is_file())


def _link_tree(src: Path, dst: Path, skip: set[str] = frozenset()) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in skip or any(part.startswith(".") for part in rel.parts):  # .old/.tmp leftovers
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another file system
            shutil.copy2(path, target)


def push(model_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
         message: str | None = None) -> dict[str, Any]:
    """Create ``repo_id`` if needed and upload the export in one commit; returns what was uploaded.

    Raises:
        UsageError: a malformed repository id, or the Hub refused (no token, no permission, no network).
        ModelDirError: ``model_dir`` is not an exported model folder.
    """
    from huggingface_hub import HfApi

    model_dir = Path(model_dir).expanduser()
    if not REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise UsageError(f"{repo_id!r} is not a Hugging Face repository id; pass NAME or OWNER/NAME (letters, digits, "
                         "'-', '_', '.')")
    for name in (ONNX_FILE, METRICS_FILE):
        if not (model_dir / name).is_file():
            raise ModelDirError(f"{model_dir}: no {name}; pass an exported model folder such as RUN_DIR/best")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="automl-ft-push-") as tmp:
        files = stage(model_dir, Path(tmp))
        try:
            url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model",
                                       commit_message=message or f"automl-ft export of {model_dir.name}")
        except Exception as e:  # huggingface_hub's HTTP / auth / connection errors: one line, the likely fix
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UsageError(f"push to {repo_id} failed: {text}; check the token (HF_TOKEN or 'hf auth login'), "
                             "your rights on the repository and the network") from None
    return {"repo_id": repo_id, "url": str(url), "commit": str(getattr(commit, "oid", commit)), "files": files}
