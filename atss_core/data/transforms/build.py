"""Transforms of the training and test data loaders, from the config."""
from atss_core.config import ConfigError

from .transforms import Compose, Normalize, RandomHorizontalFlip, Resize, ToTensor


def train_min_sizes(cfg):
    """Shorter-side sizes drawn from during training: ``INPUT.MIN_SIZE_TRAIN``,
    or every integer of ``INPUT.MIN_SIZE_RANGE_TRAIN`` (lo, hi) inclusive when
    that is not (-1, -1) (multi-scale training, e.g. 640..800)."""
    size_range = tuple(cfg.INPUT.MIN_SIZE_RANGE_TRAIN)
    if size_range == (-1, -1):
        sizes = tuple(cfg.INPUT.MIN_SIZE_TRAIN)
        if not sizes or min(sizes) < 1:
            raise ConfigError(
                f"INPUT.MIN_SIZE_TRAIN needs positive sizes, got {sizes}"
            )
        return sizes
    if len(size_range) != 2 or not 1 <= size_range[0] <= size_range[1]:
        raise ConfigError(
            "INPUT.MIN_SIZE_RANGE_TRAIN must be (lo, hi) with 1 <= lo <= hi, or (-1, -1) "
            f"to use INPUT.MIN_SIZE_TRAIN; got {size_range}"
        )
    return tuple(range(size_range[0], size_range[1] + 1))


def build_normalize(cfg):
    """:class:`Normalize` with ``INPUT.PIXEL_MEAN``, ``PIXEL_STD``, ``TO_BGR255``."""
    return Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.TO_BGR255)


def build_transforms(cfg, is_train=True):
    """Resize -> (training: random horizontal flip) -> ToTensor -> Normalize.

    Training: shorter side from :func:`train_min_sizes`, longer side capped at
    ``INPUT.MAX_SIZE_TRAIN``, flip with ``INPUT.HORIZONTAL_FLIP_PROB_TRAIN``.
    Test: shorter side ``INPUT.MIN_SIZE_TEST``, cap ``INPUT.MAX_SIZE_TEST``, no
    flip.
    """
    if is_train:
        resize = Resize(train_min_sizes(cfg), cfg.INPUT.MAX_SIZE_TRAIN)
        flip_prob = cfg.INPUT.HORIZONTAL_FLIP_PROB_TRAIN
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(
                f"INPUT.HORIZONTAL_FLIP_PROB_TRAIN must lie in [0, 1], got {flip_prob}"
            )
        steps = [resize, RandomHorizontalFlip(flip_prob)]
    else:
        if cfg.INPUT.MIN_SIZE_TEST < 1:
            raise ConfigError(f"INPUT.MIN_SIZE_TEST must be positive, got {cfg.INPUT.MIN_SIZE_TEST}")
        steps = [Resize(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    return Compose(steps + [ToTensor(), build_normalize(cfg)])
