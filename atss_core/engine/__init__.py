"""Training loop, inference with COCO evaluation, test-time augmentation and per-class thresholds."""
