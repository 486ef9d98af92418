"""Training loop, inference with COCO evaluation, test-time augmentation,
per-class thresholds, and :class:`Predictor` (``from atss_core.engine import
Predictor``: a detector run on images from Python)."""

__all__ = ["Predictor", "Detections"]


def __getattr__(name):
    # Imported on first use: the submodules (trainer, inference, ...) do not
    # need the model-building imports of the predictor.
    if name in __all__:
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
