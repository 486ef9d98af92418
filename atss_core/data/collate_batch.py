"""Turn a list of dataset samples into a batch."""
from atss_core.structures.image_list import to_image_list


def _readable(batch):
    # A test dataset gives None for an image it could not read (see COCODataset).
    return [sample for sample in batch if sample is not None]


class BatchCollator:
    """Samples ``(image [3, H, W], target, index)`` -> ``(images, targets, indices)``.

    ``images`` is an :class:`~atss_core.structures.ImageList`: the images
    zero-padded at the bottom/right to a common size rounded up to a multiple
    of ``size_divisible`` (0: no rounding), with each image's (h, w) before
    padding in ``image_sizes``. ``targets`` and ``indices`` are tuples in batch
    order. Samples that are ``None`` (unreadable test images) are left out; a
    batch with none left collates to ``None``, which the test loaders skip.
    """

    def __init__(self, size_divisible=0):
        self.size_divisible = int(size_divisible)

    def __call__(self, batch):
        batch = _readable(batch)
        if not batch:
            return None
        images, targets, indices = zip(*batch)
        return to_image_list(list(images), self.size_divisible), targets, indices


class BBoxAugCollator:
    """For test-time augmentation, where the dataset has no transforms: samples
    ``(image [H, W, 3] uint8 BGR array, target in original pixels, index)`` ->
    ``(list of images, targets, indices)``; unreadable samples are left out as
    in :class:`BatchCollator`."""

    def __call__(self, batch):
        batch = _readable(batch)
        if not batch:
            return None
        images, targets, indices = zip(*batch)
        return list(images), targets, indices
