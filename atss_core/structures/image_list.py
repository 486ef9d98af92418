"""``ImageList``: a batch of images of different sizes, zero-padded to one tensor."""
import math

import torch


class ImageList:
    """``tensors`` [N, C, H, W] (padded at the bottom/right) and ``image_sizes``,
    the (height, width) of each image before padding."""

    def __init__(self, tensors, image_sizes):
        self.tensors = tensors
        self.image_sizes = [(int(h), int(w)) for h, w in image_sizes]

    def to(self, device, **kwargs):
        return ImageList(self.tensors.to(device, **kwargs), self.image_sizes)

    def __len__(self):
        return len(self.image_sizes)


def to_image_list(tensors, size_divisible=0):
    """Batch ``tensors`` into an :class:`ImageList`.

    ``tensors`` is an ImageList (returned as is), a single [C, H, W] or
    [N, C, H, W] tensor, or a list of [C, H, W] tensors. The batch is padded with
    zeros at the bottom/right to the largest height and width, rounded up to a
    multiple of ``size_divisible`` when it is > 0.
    """
    if isinstance(tensors, ImageList):
        return tensors
    if isinstance(tensors, torch.Tensor):
        if tensors.dim() == 3:
            tensors = tensors[None]
        if tensors.dim() != 4:
            raise ValueError(f"to_image_list needs [C, H, W] or [N, C, H, W], got {tuple(tensors.shape)}")
        tensors = list(tensors)
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise TypeError("to_image_list needs an ImageList, a tensor or a non-empty list of tensors")
    for t in tensors:
        if t.dim() != 3 or t.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                "to_image_list needs [C, H, W] tensors with one channel count, got "
                f"{[tuple(t.shape) for t in tensors]}"
            )
    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    if size_divisible > 0:
        max_h = int(math.ceil(max_h / size_divisible) * size_divisible)
        max_w = int(math.ceil(max_w / size_divisible) * size_divisible)
    batched = tensors[0].new_zeros((len(tensors), tensors[0].shape[0], max_h, max_w))
    for img, pad in zip(tensors, batched):
        pad[:, : img.shape[1], : img.shape[2]].copy_(img)
    return ImageList(batched, [t.shape[-2:] for t in tensors])
