"""The repository's layout never hides an installed package.

`python -m pytest` from the repository root puts the root on ``sys.path`` ahead of site-packages, so a top-level
folder named like an installed package wins the import. A top-level ``kernels/`` did exactly that to Hugging Face's
``kernels`` (a dependency of transformers 5.25): ``import transformers.modeling_utils`` failed and the whole test run
stopped at collection on a fresh clone.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_DISTRIBUTION = "automl-ft"
# Some distributions ship a stray top-level ``tests`` package (iterative-stratification 0.1.9 does). Nothing
# imports it, and pytest puts the repository root first, so our tests/ wins, as it must.
STRAY_NAMES = {"tests"}


def _import_names_at_root() -> dict[str, Path]:
    """Names that ``import NAME`` would resolve to a file or folder in the repository root."""
    names: dict[str, Path] = {}
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name.endswith((".egg-info", ".dist-info")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            names[entry.stem] = entry
        elif entry.is_dir() and entry.name.isidentifier():
            # A regular package shadows outright; a folder of modules becomes a namespace portion that still
            # shadows a namespace package of the same name, so both count.
            if (entry / "__init__.py").is_file() or any(entry.glob("*.py")):
                names[entry.name] = entry
    return names


def test_no_top_level_folder_shadows_an_installed_distribution():
    installed = importlib.metadata.packages_distributions()
    clashes = {name: sorted(set(dists)) for name, dists in installed.items()
               if name in _import_names_at_root() and set(dists) != {OWN_DISTRIBUTION} and name not in STRAY_NAMES}
    assert not clashes, (f"top-level folders of {ROOT} shadow installed packages {clashes}: move them under "
                         "automl_ft/ (as automl_ft/kernels/ was)")


def test_the_check_sees_hugging_faces_kernels_package():
    """The test above is live: transformers' ``kernels`` dependency is installed, and nothing at the root is named so."""
    if "kernels" not in importlib.metadata.packages_distributions():
        pytest.skip("Hugging Face's kernels package is not installed here")
    assert "kernels" not in _import_names_at_root()
    assert (ROOT / "automl_ft" / "kernels" / "__init__.py").is_file()


def test_transformers_imports_from_the_repository_root():
    """What `python -m pytest` does on a fresh clone: the root first on sys.path, then transformers' model code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys, kernels, transformers.modeling_utils; "
            "assert sys.path[0] in ('', sys.argv[1]), sys.path[0]; print(kernels.__file__)")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # Hugging Face's package from site-packages (a venv may sit inside the checkout), not a folder of ours.
    assert "site-packages" in Path(done.stdout.strip()).parts, done.stdout


def test_every_sub_package_is_installed():
    """pyproject lists packages by hand (search_spaces/ and bench/ are mapped under automl_ft): a new sub-package
    missing from the list imports in a checkout but not from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "automl_ft").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages in pyproject.toml"
