"""Which implementation runs a kernel: the fused Triton one or the PyTorch reference.

``backend="triton"`` runs the Triton kernels: compiled on CUDA tensors, or on CPU tensors when Triton's interpreter
is on (``TRITON_INTERPRET=1``, read when ``@triton.jit`` decorates, so it must be set before this package is
imported). ``"torch"`` runs the reference. ``"auto"`` picks Triton on CUDA and the reference elsewhere, and logs the
choice once per device type, because an automatic fallback must never be silent.
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


def resolve_backend(backend: str, device_type: str, op: str) -> str:
    """Return ``"triton"`` or ``"torch"`` for a tensor on ``device_type``.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        KernelUnavailableError: ``backend="triton"`` where Triton cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r} for {op}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    runnable = triton_available() and (device_type == "cuda" or (device_type == "cpu" and TRITON_INTERPRETER))
    if backend == "triton":
        if not runnable:
            raise KernelUnavailableError(
                f"{op}: backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 set before import for CPU "
                f"tensors (got a {device_type} tensor); use backend='auto' or 'torch'"
            )
        return "triton"
    chosen = "triton" if (device_type == "cuda" and runnable) else "torch"
    if (op, device_type) not in _logged_auto:
        _logged_auto.add((op, device_type))
        _log.info("%s: backend='auto' on %s uses the %s implementation", op, device_type, chosen)
    return chosen
