"""Per-sample transforms of (image, target) pairs.

Conventions:

* Before :class:`ToTensor` the image is a ``numpy.uint8`` array of shape
  [H, W, 3] in BGR order (what the datasets return and ``cv2.imread`` gives).
* Resizing is Pillow's bilinear ``Image.resize``, as in the reference (which
  resizes PIL images with torchvision): when shrinking it filters over the
  whole footprint of each output pixel, unlike ``cv2.resize(INTER_LINEAR)``,
  so the network sees the reference's pixels exactly, at every scale.
* After :class:`ToTensor` it is a ``torch.float32`` tensor [3, H, W], still BGR
  with values in 0..255; :class:`Normalize` turns it into the network input.
* ``target`` is a :class:`~atss_core.structures.BoxList` in the pixel
  coordinates of the current image (its ``size`` is the image's (w, h)), or
  ``None`` when there are no boxes to carry along (demo, test-time
  augmentation). Every transform returns ``(image, target)``.

Random choices (training scale, flip) use torch's random number generator, so a
``torch.manual_seed`` in the main process (and the DataLoader's per-worker
seeding) makes them reproducible.
"""
import cv2
import numpy as np
import torch
from PIL import Image

from atss_core.structures.bounding_box import FLIP_LEFT_RIGHT


def get_size(image_size, min_size, max_size=None):
    """Output (height, width) of the reference's resize rule.

    Args:
        image_size: (width, height) of the input image.
        min_size (int): wanted length of the shorter side.
        max_size (int or None): cap on the longer side; when scaling the shorter
            side to ``min_size`` would make the longer side exceed it, the
            shorter side becomes ``round(max_size * short / long)`` instead.

    The longer side is ``int(size * long / short)`` (truncated), and an image
    whose shorter side already has the wanted length keeps its size. For
    example a 640x426 image with ``min_size=800, max_size=1333`` becomes
    h=800, w=1201.
    """
    w, h = image_size
    size = min_size
    short, long = float(min(w, h)), float(max(w, h))
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize_image(image, min_size, max_size=None):
    """``image`` ([H, W, 3] uint8 array, any channel order) resized to the size
    of :func:`get_size` with Pillow's bilinear filter: the reference's pixels."""
    h, w = image.shape[:2]
    new_h, new_w = get_size((w, h), min_size, max_size)
    if (new_h, new_w) == (h, w):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(resized)


class Compose:
    """Apply ``transforms`` in order to ``(image, target)``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target=None):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self):
        lines = "".join(f"\n    {t}" for t in self.transforms)
        return f"{self.__class__.__name__}({lines}\n)"


class Resize:
    """Resize so that the shorter side is one of ``min_size`` (chosen uniformly
    at random per call) and the longer side at most ``max_size`` (see
    :func:`get_size`). Boxes are scaled with the image."""

    def __init__(self, min_size, max_size):
        if isinstance(min_size, int):
            min_size = (min_size,)
        self.min_size = tuple(int(s) for s in min_size)
        if not self.min_size or min(self.min_size) < 1:
            raise ValueError(f"Resize needs positive shorter-side sizes, got {min_size!r}")
        self.max_size = max_size

    def _pick_size(self):
        if len(self.min_size) == 1:
            return self.min_size[0]
        return self.min_size[int(torch.randint(len(self.min_size), ()))]

    def __call__(self, image, target=None):
        image = resize_image(image, self._pick_size(), self.max_size)
        if target is not None:
            target = target.resize((image.shape[1], image.shape[0]))
        return image, target

    def __repr__(self):
        sizes = self.min_size
        if len(sizes) > 3 and sizes == tuple(range(sizes[0], sizes[-1] + 1)):
            sizes = f"{sizes[0]}..{sizes[-1]}"
        return f"{self.__class__.__name__}(min_size={sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``prob``; boxes follow with
    the +1 convention (x1' = w - x2 - 1, x2' = w - x1 - 1)."""

    def __init__(self, prob=0.5):
        self.prob = float(prob)

    def __call__(self, image, target=None):
        if self.prob > 0 and float(torch.rand(())) < self.prob:
            image = cv2.flip(image, 1)
            if target is not None:
                target = target.transpose(FLIP_LEFT_RIGHT)
        return image, target

    def __repr__(self):
        return f"{self.__class__.__name__}(prob={self.prob})"


class ToTensor:
    """[H, W, 3] uint8 BGR array -> [3, H, W] float32 BGR tensor, values 0..255
    (no scaling; :class:`Normalize` does it)."""

    def __call__(self, image, target=None):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(
                "ToTensor needs an [H, W, 3] numpy image (BGR, as cv2.imread returns), got "
                f"{type(image).__name__} of shape {getattr(image, 'shape', None)}"
            )
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(chw), target

    def __repr__(self):
        return f"{self.__class__.__name__}()"


class Normalize:
    """Network input from a [3, H, W] float BGR 0..255 tensor.

    ``to_bgr255=True`` (Caffe2/MSRA backbones): ``(bgr - mean) / std`` with
    ``mean``/``std`` in BGR order and 0..255 units; with std 1 this is exactly
    ``image.astype(float32) - mean``.
    ``to_bgr255=False`` (torchvision-style backbones): the image becomes RGB in
    0..1, then ``(rgb - mean) / std`` with ``mean``/``std`` in RGB order.
    """

    def __init__(self, mean, std, to_bgr255=True):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(3, 1, 1)
        self.to_bgr255 = bool(to_bgr255)

    def __call__(self, image, target=None):
        if not self.to_bgr255:
            image = image.flip(0) / 255.0
        return (image - self.mean) / self.std, target

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(mean={self.mean.flatten().tolist()}, "
            f"std={self.std.flatten().tolist()}, to_bgr255={self.to_bgr255})"
        )
