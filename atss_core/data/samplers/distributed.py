"""Which dataset indices each process reads.

Training: :class:`DistributedSampler` (shuffled per epoch from a seed shared by
all processes, padded so that every process gets the same number of indices).
Testing: :class:`InferenceSampler` (contiguous, in order, each index exactly
once over all processes), so that predictions gathered on the main process are
those of a single-process run.
"""
import torch
from torch.utils.data import Sampler

from atss_core.utils.comm import get_rank, get_world_size


def _check_rank(num_replicas, rank):
    num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
    rank = get_rank() if rank is None else int(rank)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
    return num_replicas, rank


class DistributedSampler(Sampler):
    """Shard of a (shuffled) dataset for one training process.

    Each epoch, the indices 0..size-1 are permuted with a generator seeded by
    ``seed + epoch`` (the same on every process), repeated from the start until
    their count is a multiple of ``num_replicas``, and process ``rank`` takes
    every ``num_replicas``-th index starting at ``rank``. Call
    :meth:`set_epoch` before each pass for a new order.

    Args:
        size (int): number of samples in the dataset.
        num_replicas, rank (int or None): default to the torch.distributed
            world size and rank (1 and 0 without it).
        shuffle (bool): permute (True) or keep 0..size-1 (False).
        seed (int): base seed shared by all processes.
    """

    def __init__(self, size, num_replicas=None, rank=None, shuffle=True, seed=0):
        self.size = int(size)
        if self.size < 1:
            raise ValueError("DistributedSampler needs a non-empty dataset")
        self.num_replicas, self.rank = _check_rank(num_replicas, rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = -(-self.size // self.num_replicas)  # ceil
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        repeats = -(-self.total_size // self.size)
        order = order.repeat(repeats)[: self.total_size]
        return iter(order[self.rank :: self.num_replicas].tolist())

    def __len__(self):
        return self.num_samples


class InferenceSampler(Sampler):
    """Contiguous, ordered shard of 0..size-1 for one test process.

    Process ``r`` of ``n`` reads ``[r * size // n, (r + 1) * size // n)``: over
    all processes every index appears exactly once, in order, with no padding
    (shards differ by at most one index; a shard may be empty when there are
    more processes than images).
    """

    def __init__(self, size, num_replicas=None, rank=None):
        self.size = int(size)
        self.num_replicas, self.rank = _check_rank(num_replicas, rank)
        self.begin = self.rank * self.size // self.num_replicas
        self.end = (self.rank + 1) * self.size // self.num_replicas

    def __iter__(self):
        return iter(range(self.begin, self.end))

    def __len__(self):
        return self.end - self.begin
