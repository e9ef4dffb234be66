"""Which implementation runs a kernel: the fused Triton one or the PyTorch reference.

``backend="triton"`` runs the Triton kernels: compiled on CUDA tensors, or on CPU tensors when Triton's interpreter
is on (``TRITON_INTERPRET=1``, read when ``@triton.jit`` decorates, so it must be set before this package is
imported). ``"torch"`` runs the reference. ``"auto"`` picks Triton on CUDA and the reference elsewhere, and logs the
choice once per device type, because an automatic fallback must never be silent. An op may offer more fused
backends (LoRA's ``"addmm"``: cuBLAS for the frozen GEMM, Triton for the rest) through ``choices``.

``AUTOML_FT_SINGLE_CONFIG=1`` (:func:`single_config`) makes autotuned kernels use one config each, without
benchmarking: for short first runs on a GPU (issue 14 reports ~30 s of compile per specialisation);
``AUTOML_FT_MAX_CONFIGS=N`` (:func:`max_configs`) keeps the first N that fit.
"""

from __future__ import annotations

import logging
import os

from automl_ft.errors import KernelUnavailableError

BACKENDS = ("auto", "triton", "torch")

# Read once, at import, exactly as triton.jit reads it: flipping the variable later changes nothing.
TRITON_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no")

_log = logging.getLogger("automl_ft.kernels")
_logged_auto: set[tuple[str, str]] = set()


def triton_available() -> bool:
    """Whether the ``triton`` package imports at all (it ships with torch's CUDA builds)."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def single_config() -> bool:
    """Whether ``AUTOML_FT_SINGLE_CONFIG`` asks autotuned kernels for a single config (read at each launch)."""
    return os.environ.get("AUTOML_FT_SINGLE_CONFIG", "0").strip().lower() not in ("", "0", "false", "no")


def max_configs() -> int | None:
    """How many configs an autotuned kernel may try: 1 under ``AUTOML_FT_SINGLE_CONFIG=1``, N under
    ``AUTOML_FT_MAX_CONFIGS=N`` (the first N that fit; a short benchmark run), None (all) otherwise."""
    if single_config():
        return 1
    raw = os.environ.get("AUTOML_FT_MAX_CONFIGS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"AUTOML_FT_MAX_CONFIGS must be a positive integer, got {raw!r}; unset it to try all configs")
    return int(raw)


def resolve_backend(backend: str, device_type: str, op: str, choices: tuple[str, ...] = BACKENDS) -> str:
    """Return ``"torch"`` or a fused backend of ``choices`` (``"triton"`` for ``"auto"``) for ``device_type``.

    Raises:
        ValueError: ``backend`` is not one of ``choices``.
        KernelUnavailableError: a fused backend where Triton cannot run.
    """
    if backend not in choices:
        raise ValueError(f"unknown kernel backend {backend!r} for {op}; choose one of {', '.join(choices)}")
    if backend == "torch":
        return "torch"
    runnable = triton_available() and (device_type == "cuda" or (device_type == "cpu" and TRITON_INTERPRETER))
    if backend != "auto":
        if not runnable:
            raise KernelUnavailableError(
                f"{op}: backend={backend!r} needs a CUDA tensor, or TRITON_INTERPRET=1 set before import for CPU "
                f"tensors (got a {device_type} tensor); use backend='auto' or 'torch'"
            )
        return backend
    chosen = "triton" if (device_type == "cuda" and runnable) else "torch"
    if (op, device_type) not in _logged_auto:
        _logged_auto.add((op, device_type))
        _log.info("%s: backend='auto' on %s uses the %s implementation", op, device_type, chosen)
    return chosen
