from .coco import COCODataset, has_valid_annotation
from .concat_dataset import ConcatDataset

__all__ = ["COCODataset", "ConcatDataset", "has_valid_annotation"]
