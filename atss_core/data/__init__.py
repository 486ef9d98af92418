"""Data pipeline: COCO-format datasets, transforms, samplers and the loaders of
``tools/train_net.py`` / ``tools/test_net.py``. See docs/DATA.md."""
from .build import build_dataset, make_data_loader
from .collate_batch import BatchCollator, BBoxAugCollator
from .datasets import COCODataset, ConcatDataset
from .transforms import build_transforms

__all__ = [
    "BatchCollator",
    "BBoxAugCollator",
    "COCODataset",
    "ConcatDataset",
    "build_dataset",
    "build_transforms",
    "make_data_loader",
]
