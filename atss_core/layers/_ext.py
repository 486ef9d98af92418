"""Loader of the compiled extension ``atss_core._C``.

The extension is optional. When it imports, its operators live in
``torch.ops.atss`` (registered with ``TORCH_LIBRARY``) and this module attaches
their autograd formulas, fake (meta) implementations for ``torch.compile`` and
autocast rules. When it does not import, every layer falls back to its
pure-PyTorch implementation and :func:`warn_fallback` tells the user once how
to build the extension.

Public helpers:

- :func:`has_kernel` -- is there a compiled kernel for this device (and dtype)?
- :func:`ops` -- the ``torch.ops.atss`` namespace (only valid when loaded).
- :func:`warn_fallback` -- one-time notice that the slow path is in use.
- :data:`LOAD_ERROR` -- why the import failed (``None`` when it did not).
"""
import warnings

import torch

__all__ = ["LOAD_ERROR", "has_kernel", "is_loaded", "ops", "warn_fallback", "with_cuda"]

BUILD_HINT = (
    "build it from the repository root with "
    "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`); "
    "see docs/KERNELS.md"
)

try:
    from atss_core import _C
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
else:
    LOAD_ERROR = None

_WARNED = set()


def is_loaded():
    """True when ``atss_core._C`` imported."""
    return _C is not None


def with_cuda():
    """True when the loaded extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.with_cuda())


def ops():
    """The ``torch.ops.atss`` operator namespace of the compiled extension."""
    if _C is None:
        raise RuntimeError(f"atss_core._C is not available ({LOAD_ERROR}); {BUILD_HINT}")
    return torch.ops.atss


def has_kernel(device, dtype=None, cpu_dtypes=None, cuda_dtypes=None):
    """Whether a compiled kernel can run on ``device``.

    Args:
        device (torch.device): device of the op's tensors.
        dtype (torch.dtype, optional): the floating dtype the op would run in.
        cpu_dtypes / cuda_dtypes (tuple of torch.dtype, optional): dtypes the
            kernel supports on that device; ``None`` means any.
    """
    if _C is None:
        return False
    if device.type == "cpu":
        allowed = cpu_dtypes
    elif device.type == "cuda" and with_cuda():
        allowed = cuda_dtypes
    else:
        return False
    return allowed is None or dtype is None or dtype in allowed


def warn_fallback(op_name, device):
    """Warn once per (op, device type) that the pure-PyTorch path is used."""
    key = (op_name, device.type)
    if key in _WARNED or torch.compiler.is_compiling():
        return
    _WARNED.add(key)
    if _C is None:
        reason = f"the compiled extension atss_core._C is not available ({LOAD_ERROR})"
        hint = f"; {BUILD_HINT}"
    elif device.type == "cuda":
        reason = "atss_core._C was built without CUDA kernels"
        hint = "; rebuild it on a machine with the CUDA toolkit (or with FORCE_CUDA=1)"
    else:
        reason = f"atss_core._C has no {device.type} kernel for this input"
        hint = ""
    warnings.warn(
        f"atss_core.layers: {op_name} uses the pure-PyTorch implementation because "
        f"{reason}{hint}. Results are the same, only slower.",
        RuntimeWarning,
        stacklevel=3,
    )
