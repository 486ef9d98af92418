"""Mixed precision settings: ``SOLVER.MIXED_PRECISION`` (training) and
``TEST.MIXED_PRECISION`` (inference), each "none", "fp16" or "bf16"."""
import torch

from atss_core.config import ConfigError

MIXED_PRECISION_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(mixed_precision, device, key="SOLVER.MIXED_PRECISION"):
    """The autocast dtype for the setting ``key`` = ``mixed_precision`` on
    ``device`` (None for "none"); raises :class:`ConfigError` naming ``key``
    for a combination that cannot run."""
    if mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ConfigError(
            f"{key} must be one of {', '.join(MIXED_PRECISION_DTYPES)}, got {mixed_precision!r}"
        )
    dtype = MIXED_PRECISION_DTYPES[mixed_precision]
    if dtype is None:
        return None
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError(f"{key} fp16 needs MODEL.DEVICE cuda; on the CPU use bf16 or none")
    if (device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"{key} bf16 is not supported by this GPU; use fp16 or none")
    return dtype
