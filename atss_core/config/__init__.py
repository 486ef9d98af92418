"""Configuration: ``cfg`` holds the defaults (see :mod:`.defaults`).

    from atss_core.config import cfg
    cfg.merge_from_file("configs/atss/atss_R_50_FPN_1x.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    validate_config(cfg)
"""
from .config_node import ConfigError, ConfigNode
from .defaults import _C as cfg
from .validation import validate_config

__all__ = ["cfg", "ConfigError", "ConfigNode", "validate_config"]
