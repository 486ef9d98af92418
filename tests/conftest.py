"""Shared test helpers: where the repository, the shared fixtures and data are."""
import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared"))
REFERENCE_DIR = os.path.join(SHARED, "reference")
COCO128_DIR = os.path.join(SHARED, "data", "coco128")

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

torch.set_num_threads(min(2, torch.get_num_threads()))

from atss_core.layers import _ext  # noqa: E402

# Kernel tests: skipped, saying why, where the compiled extension or a GPU is missing.
needs_ext = pytest.mark.skipif(
    not _ext.is_loaded(),
    reason=f"atss_core._C is not built ({_ext.LOAD_ERROR}); pip install --no-build-isolation -e .",
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_cuda_ext = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.with_cuda()),
    reason="needs a CUDA device and atss_core._C built with CUDA (FORCE_CUDA=1)",
)


def requires_reference():
    return pytest.mark.skipif(
        not os.path.isdir(REFERENCE_DIR),
        reason=f"reference fixtures not found at {REFERENCE_DIR} (../shared/reference beside the repository)",
    )


def requires_coco128():
    return pytest.mark.skipif(
        not os.path.isdir(COCO128_DIR),
        reason=f"COCO subset not found at {COCO128_DIR} (../shared/data/coco128 beside the repository)",
    )


def config_path(name):
    return os.path.join(REPO_ROOT, "configs", "atss", name + ".yaml")


def load_cfg(name, opts=()):
    from atss_core.config import cfg

    c = cfg.clone()
    c.defrost()
    c.merge_from_file(config_path(name) if not name.endswith(".yaml") else name)
    c.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return c



@pytest.fixture
def restore_atss_logger():
    """The tools' main() configures the "atss_core" logger (handlers, no
    propagation); put it back so that later tests' log capture works."""
    import logging

    logger = logging.getLogger("atss_core")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]
