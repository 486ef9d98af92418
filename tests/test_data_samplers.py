"""Samplers and batch collation of atss_core.data."""
import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from atss_core.data.collate_batch import BatchCollator, BBoxAugCollator
from atss_core.data.samplers import (
    DistributedSampler,
    GroupedBatchSampler,
    InferenceSampler,
    IterationBasedBatchSampler,
)
from atss_core.structures import BoxList


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, indices):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def test_grouped_batches_hold_one_group_in_sampler_order():
    group_ids = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    sampler = _ListSampler([9, 2, 3, 0, 1, 4, 7, 5, 8, 6])
    batches = list(GroupedBatchSampler(sampler, group_ids, batch_size=3))
    # group 0 in sampler order: 9 3 0 5 6 -> [9 3 0] [5 6]; group 1: 2 1 4 7 8 -> [2 1 4] [7 8];
    # batches ordered by the sampler position of their first index (9:0, 2:1, 7:6, 5:7).
    assert batches == [[9, 3, 0], [2, 1, 4], [7, 8], [5, 6]]
    assert len(GroupedBatchSampler(sampler, group_ids, 3)) == 4
    assert list(GroupedBatchSampler(sampler, group_ids, 3, drop_uneven=True)) == [[9, 3, 0], [2, 1, 4]]


def test_grouped_batches_cover_every_index_once():
    g = torch.Generator().manual_seed(0)
    group_ids = torch.randint(0, 2, (101,), generator=g).tolist()
    sampler = _ListSampler(torch.randperm(101, generator=g).tolist())
    batches = list(GroupedBatchSampler(sampler, group_ids, 4))
    assert sorted(i for b in batches for i in b) == list(range(101))
    assert all(len({group_ids[i] for i in b}) == 1 for b in batches)
    assert all(len(b) == 4 for b in batches[:-2])


def test_grouped_batch_sampler_rejects_non_samplers():
    with pytest.raises(TypeError, match="Sampler"):
        GroupedBatchSampler([0, 1, 2], [0, 0, 0], 2)


def test_iteration_based_count_epochs_and_resume():
    sampler = DistributedSampler(10, num_replicas=1, rank=0, shuffle=True)
    batches = BatchSampler(sampler, 3, drop_last=False)  # 4 batches per epoch
    full = list(IterationBasedBatchSampler(batches, 11))
    assert len(full) == 11 and len(IterationBasedBatchSampler(batches, 11)) == 11
    epoch0 = [i for b in full[:4] for i in b]
    epoch1 = [i for b in full[4:8] for i in b]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1  # set_epoch reshuffled
    for start in (0, 1, 4, 7, 10, 11):
        assert list(IterationBasedBatchSampler(batches, 11, start_iter=start)) == full[start:]


def test_iteration_based_empty_sampler_raises():
    empty = BatchSampler(_ListSampler([]), 2, drop_last=False)
    with pytest.raises(RuntimeError, match="no batches"):
        list(IterationBasedBatchSampler(empty, 3))


@pytest.mark.parametrize("size", [1, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_distributed_sampler_shards(size, world):
    shards = [DistributedSampler(size, world, r, seed=5) for r in range(world)]
    for s in shards:
        s.set_epoch(3)
    lists = [list(s) for s in shards]
    assert len({len(x) for x in lists}) == 1 and len(lists[0]) == len(shards[0])
    assert set(i for x in lists for i in x) == set(range(size))
    assert sum(map(len, lists)) == -(-size // world) * world
    again = DistributedSampler(size, world, 0, seed=5)
    again.set_epoch(3)
    assert list(again) == lists[0]


def test_distributed_sampler_epoch_changes_order():
    s = DistributedSampler(50, 1, 0)
    first = list(s)
    s.set_epoch(1)
    assert sorted(list(s)) == sorted(first) and list(s) != first
    assert list(DistributedSampler(5, 1, 0, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rank"):
        DistributedSampler(5, 2, 2)


@pytest.mark.parametrize("size", [0, 1, 2, 5, 128])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_inference_sampler_covers_each_index_once_in_order(size, world):
    shards = [list(InferenceSampler(size, world, r)) for r in range(world)]
    assert [i for shard in shards for i in shard] == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(InferenceSampler(size, world, r)) for r in range(world)] == list(map(len, shards))


def test_inference_sampler_with_grouping_keeps_the_shard():
    group_ids = [i % 2 for i in range(9)]
    batches = list(GroupedBatchSampler(InferenceSampler(9, 2, 1), group_ids, 2))
    assert sorted(i for b in batches for i in b) == [4, 5, 6, 7, 8]


def test_sequential_grouping_matches_plain_sampler_types():
    # GroupedBatchSampler accepts any torch Sampler.
    batches = list(GroupedBatchSampler(SequentialSampler(range(4)), [0, 0, 0, 0], 3))
    assert batches == [[0, 1, 2], [3]]


def _sample(h, w, index, value=1.0):
    target = BoxList(torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]]), (w, h))
    target.add_field("labels", torch.tensor([1]))
    return torch.full((3, h, w), value), target, index


def test_batch_collator_pads_to_size_divisibility():
    batch = [_sample(50, 70, 4, 1.0), _sample(65, 33, 9, 2.0)]
    images, targets, indices = BatchCollator(32)(batch)
    assert images.tensors.shape == (2, 3, 96, 96)
    assert images.image_sizes == [(50, 70), (65, 33)]
    assert indices == (4, 9) and targets[1].size == (33, 65)
    assert torch.all(images.tensors[0, :, :50, :70] == 1.0)
    assert images.tensors[0, :, 50:].abs().sum() == 0 and images.tensors[0, :, :, 70:].abs().sum() == 0
    images, _, _ = BatchCollator(0)(batch)
    assert images.tensors.shape == (2, 3, 65, 70)


def test_collators_drop_unreadable_samples():
    images, targets, indices = BatchCollator(32)([None, _sample(10, 10, 3)])
    assert indices == (3,) and len(images) == 1
    assert BatchCollator(32)([None, None]) is None
    raw, targets, indices = BBoxAugCollator()([("img-a", "t-a", 0), None, ("img-b", "t-b", 2)])
    assert raw == ["img-a", "img-b"] and indices == (0, 2)
    assert BBoxAugCollator()([None]) is None
