from .build import build_normalize, build_transforms, train_min_sizes
from .transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    get_size,
    resize_image,
)

__all__ = [
    "Compose",
    "Normalize",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
    "build_normalize",
    "build_transforms",
    "get_size",
    "resize_image",
    "train_min_sizes",
]
