"""Batches whose images share an aspect-ratio group."""
from torch.utils.data import BatchSampler, Sampler


class GroupedBatchSampler(BatchSampler):
    """Batches of ``batch_size`` indices of one group each (e.g. landscape
    images with landscape images), in an order close to the sampler's.

    The sampler's indices are split by group, each group is cut into batches
    in sampler order, and the batches are ordered by the sampler position of
    their first index (the reference framework's ordering). The last, shorter
    batch of a group is kept unless ``drop_uneven``.

    Args:
        sampler (Sampler): yields dataset indices.
        group_ids (sequence of int): group of every dataset index.
        batch_size (int): indices per batch.
        drop_uneven (bool): drop batches shorter than ``batch_size``.
    """

    def __init__(self, sampler, group_ids, batch_size, drop_uneven=False):
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a torch.utils.data.Sampler, got {type(sampler).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size = int(batch_size)
        self.drop_uneven = bool(drop_uneven)

    def _make_batches(self):
        open_batches = {}  # group -> (position of its first index, indices)
        batches = []
        for position, index in enumerate(self.sampler):
            group = self.group_ids[index]
            start, indices = open_batches.setdefault(group, (position, []))
            indices.append(index)
            if len(indices) == self.batch_size:
                batches.append((start, indices))
                del open_batches[group]
        if not self.drop_uneven:
            batches.extend(open_batches.values())
        batches.sort(key=lambda b: b[0])
        return [indices for _, indices in batches]

    def __iter__(self):
        return iter(self._make_batches())

    def __len__(self):
        # The count depends on which indices the sampler yields; it is that of
        # the next pass for samplers that are deterministic given their epoch
        # (DistributedSampler, InferenceSampler, SequentialSampler).
        return len(self._make_batches())
