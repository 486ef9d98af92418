from atss_core.config import validate_config

from .detector import ATSSDetector


def build_detection_model(cfg):
    """The detector described by ``cfg`` (validated first)."""
    validate_config(cfg)
    return ATSSDetector(cfg)


__all__ = ["ATSSDetector", "build_detection_model"]
