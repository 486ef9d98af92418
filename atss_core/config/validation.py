"""Checks of config values that a type check cannot catch (choices, lengths,
ranges, consistency, catalog names), run before anything is built."""
import math

from .config_node import ConfigError

_CHOICES = {
    "MODEL.ATSS.POSITIVE_TYPE": ("ATSS", "SSC", "IoU", "TOPK"),
    "MODEL.ATSS.REGRESSION_TYPE": ("BOX", "POINT"),
    "SOLVER.WARMUP_METHOD": ("constant", "linear"),
    "SOLVER.MIXED_PRECISION": ("none", "fp16", "bf16"),
    "TEST.MIXED_PRECISION": ("none", "fp16", "bf16"),
    "TEST.BBOX_AUG.MERGE_TYPE": ("vote", "soft-vote"),
}


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate_config(cfg):
    """Raise :class:`ConfigError` naming the first invalid key of ``cfg``."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")

    atss = cfg.MODEL.ATSS
    if len(atss.ANCHOR_SIZES) != len(atss.ANCHOR_STRIDES):
        raise ConfigError(
            "MODEL.ATSS.ANCHOR_SIZES and MODEL.ATSS.ANCHOR_STRIDES need one entry per FPN "
            f"level; got {len(atss.ANCHOR_SIZES)} and {len(atss.ANCHOR_STRIDES)}"
        )
    if len(atss.ANCHOR_STRIDES) != 5:
        raise ConfigError(
            f"MODEL.ATSS.ANCHOR_STRIDES needs 5 entries (P3-P7), got {tuple(atss.ANCHOR_STRIDES)}"
        )
    num_anchors = len(atss.ASPECT_RATIOS) * atss.SCALES_PER_OCTAVE
    if num_anchors < 1:
        raise ConfigError("MODEL.ATSS.ASPECT_RATIOS and SCALES_PER_OCTAVE give no anchors")
    if atss.REGRESSION_TYPE == "POINT" and num_anchors != 1:
        raise ConfigError(
            "MODEL.ATSS.REGRESSION_TYPE POINT needs one anchor per location "
            f"(ASPECT_RATIOS of length 1 and SCALES_PER_OCTAVE 1); got {num_anchors}"
        )
    if atss.NUM_CLASSES < 2:
        raise ConfigError(
            f"MODEL.ATSS.NUM_CLASSES counts the background and must be >= 2, got {atss.NUM_CLASSES}"
        )
    if not 0.0 < atss.PRIOR_PROB < 1.0:
        raise ConfigError(f"MODEL.ATSS.PRIOR_PROB must lie in (0, 1), got {atss.PRIOR_PROB}")
    if len(cfg.MODEL.RESNETS.STAGE_WITH_DCN) != 4:
        raise ConfigError(
            "MODEL.RESNETS.STAGE_WITH_DCN needs 4 entries (res2..res5), got "
            f"{tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN)}"
        )
    device = cfg.MODEL.DEVICE
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"MODEL.DEVICE must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
    steps = tuple(cfg.SOLVER.STEPS)
    if list(steps) != sorted(steps):
        raise ConfigError(f"SOLVER.STEPS must be increasing, got {steps}")
    if len(cfg.INPUT.MIN_SIZE_RANGE_TRAIN) != 2:
        raise ConfigError(
            "INPUT.MIN_SIZE_RANGE_TRAIN must be (lo, hi) or (-1, -1), got "
            f"{tuple(cfg.INPUT.MIN_SIZE_RANGE_TRAIN)}"
        )
    if len(cfg.INPUT.PIXEL_MEAN) != 3 or len(cfg.INPUT.PIXEL_STD) != 3:
        raise ConfigError("INPUT.PIXEL_MEAN and INPUT.PIXEL_STD need 3 values each")
    aug = cfg.TEST.BBOX_AUG
    if aug.SCALE_RANGES and len(aug.SCALE_RANGES) != len(aug.SCALES):
        raise ConfigError(
            "TEST.BBOX_AUG.SCALE_RANGES needs one [lo, hi] per entry of TEST.BBOX_AUG.SCALES; "
            f"got {len(aug.SCALE_RANGES)} ranges for {len(aug.SCALES)} scales"
        )
    for r in aug.SCALE_RANGES:
        if len(r) != 2 or not 0 <= r[0] < r[1]:
            raise ConfigError(
                f"TEST.BBOX_AUG.SCALE_RANGES entries must be [lo, hi] with 0 <= lo < hi, got {list(r)}"
            )
    if any(s < 1 for s in aug.SCALES):
        raise ConfigError(f"TEST.BBOX_AUG.SCALES must be positive sizes, got {tuple(aug.SCALES)}")
    if not 0.0 < aug.VOTE_TH <= 1.0:
        raise ConfigError(f"TEST.BBOX_AUG.VOTE_TH is an IoU and must lie in (0, 1], got {aug.VOTE_TH}")
    for key in ("SOLVER.IMS_PER_BATCH", "TEST.IMS_PER_BATCH"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    for key in ("INPUT.MAX_SIZE_TRAIN", "INPUT.MAX_SIZE_TEST", "TEST.BBOX_AUG.MAX_SIZE"):
        if _get(cfg, key) < 1:
            raise ConfigError(
                f"{key} caps the longer image side in pixels and must be >= 1, got {_get(cfg, key)}; "
                "the reference uses 1333 (INPUT) and 4000 (TEST.BBOX_AUG)"
            )
    if cfg.INPUT.MIN_SIZE_TEST < 1:
        raise ConfigError(
            f"INPUT.MIN_SIZE_TEST is the shorter image side in pixels and must be >= 1, got "
            f"{cfg.INPUT.MIN_SIZE_TEST}; the reference uses 800"
        )
    solver = cfg.SOLVER
    if not (math.isfinite(solver.BASE_LR) and solver.BASE_LR > 0):
        raise ConfigError(
            f"SOLVER.BASE_LR must be a positive learning rate, got {solver.BASE_LR}; the reference "
            "uses 0.01 for a batch of 16 images (scale it with SOLVER.IMS_PER_BATCH)"
        )
    if not (math.isfinite(solver.GAMMA) and solver.GAMMA > 0):
        raise ConfigError(f"SOLVER.GAMMA multiplies the learning rate at each of SOLVER.STEPS and "
                          f"must be positive, got {solver.GAMMA}; the reference uses 0.1")
    if not 0.0 <= solver.MOMENTUM < 1.0:
        raise ConfigError(f"SOLVER.MOMENTUM must lie in [0, 1), got {solver.MOMENTUM}; the reference uses 0.9")
    for key in ("WEIGHT_DECAY", "WEIGHT_DECAY_BIAS"):
        if not solver[key] >= 0:
            raise ConfigError(f"SOLVER.{key} must be >= 0, got {solver[key]}")
    if not 0.0 <= solver.WARMUP_FACTOR <= 1.0:
        raise ConfigError(f"SOLVER.WARMUP_FACTOR is the learning rate's starting fraction and must lie "
                          f"in [0, 1], got {solver.WARMUP_FACTOR}")
    if cfg.MODEL.WEIGHT.startswith("catalog://"):
        from .paths_catalog import ModelCatalog

        ModelCatalog.check_name(cfg.MODEL.WEIGHT[len("catalog://"):], "MODEL.WEIGHT")
    return cfg
