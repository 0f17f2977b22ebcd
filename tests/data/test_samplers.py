"""EpochSampler: a permutation per epoch, exact mid-epoch resume, disjoint ranks."""
import pytest
import torch

from twist.data import EpochSampler


def _indices(sampler):
    keys = list(sampler)
    assert all(epoch == sampler.epoch for epoch, _ in keys)
    assert len(keys) == len(sampler)
    return [index for _, index in keys]


def test_every_index_once_per_epoch_when_divisible():
    sampler = EpochSampler(24, batch_size=6, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sorted(_indices(sampler)) == list(range(24))
    assert sampler.batches_per_epoch == 4


def test_not_divisible_drops_the_last_partial_batch():
    sampler = EpochSampler(26, batch_size=6)
    indices = _indices(sampler)
    assert len(indices) == 24 == len(set(indices)) and sampler.batches_per_epoch == 4
    assert set(indices) <= set(range(26))


def test_order_differs_by_epoch_and_seed_but_repeats_for_the_same_pair():
    a = EpochSampler(50, batch_size=5, seed=0)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        orders.append(_indices(a))
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    a.set_epoch(1)
    assert _indices(a) == orders[1]
    b = EpochSampler(50, batch_size=5, seed=0)
    b.set_epoch(1)
    assert _indices(b) == orders[1]
    c = EpochSampler(50, batch_size=5, seed=1)
    c.set_epoch(1)
    assert _indices(c) != orders[1]
    assert orders[0] != list(range(50))  # it does shuffle


def test_iterating_does_not_touch_the_global_rng():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    list(EpochSampler(30, batch_size=3))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("start_batch", [0, 1, 3, 4])
def test_start_batch_yields_the_tail_of_the_epoch(start_batch):
    sampler = EpochSampler(22, batch_size=5, seed=7)  # 4 batches of 5, 2 samples dropped
    sampler.set_epoch(2)
    full = _indices(sampler)
    sampler.set_epoch(2, start_batch=start_batch)
    tail = _indices(sampler)
    assert tail == full[start_batch * 5:]
    assert len(sampler) == 20 - start_batch * 5
    # Starting again from the beginning restores the whole epoch.
    sampler.set_epoch(2)
    assert _indices(sampler) == full


def test_batches_from_resumed_sampler_match_uninterrupted_run():
    sampler = EpochSampler(40, batch_size=4, seed=1)
    sampler.set_epoch(3)
    full = list(torch.utils.data.BatchSampler(sampler, 4, drop_last=True))
    sampler.set_epoch(3, start_batch=6)
    resumed = list(torch.utils.data.BatchSampler(sampler, 4, drop_last=True))
    assert resumed == full[6:]


@pytest.mark.parametrize("num_samples, batch_size, world_size", [(24, 3, 2), (50, 4, 3), (17, 2, 4)])
def test_ranks_partition_the_permutation_without_overlap(num_samples, batch_size, world_size):
    per_rank = num_samples // (world_size * batch_size) * batch_size
    parts = []
    for rank in range(world_size):
        sampler = EpochSampler(num_samples, batch_size, seed=2, rank=rank, world_size=world_size)
        sampler.set_epoch(1)
        parts.append(_indices(sampler))
        assert len(parts[-1]) == per_rank and sampler.batches_per_epoch == per_rank // batch_size
    union = [i for part in parts for i in part]
    assert len(union) == len(set(union)) == per_rank * world_size      # disjoint, all full batches
    # Interleaving the ranks gives back the single-process order, truncated to whole global batches.
    single = EpochSampler(num_samples, 1, seed=2)
    single.set_epoch(1)
    interleaved = [parts[r][k] for k in range(per_rank) for r in range(world_size)]
    assert interleaved == _indices(single)[: per_rank * world_size]


@pytest.mark.parametrize("num_samples, batch_size, world_size", [(5, 6, 1), (11, 6, 2), (0, 1, 1)])
def test_too_small_dataset_is_an_error(num_samples, batch_size, world_size):
    with pytest.raises(ValueError, match=rf"dataset of {num_samples} samples is smaller than one global batch "
                                         rf"\({world_size} x {batch_size}\)"):
        EpochSampler(num_samples, batch_size, world_size=world_size)


def test_exactly_one_global_batch_is_enough():
    assert _indices(EpochSampler(6, 6)) != []
