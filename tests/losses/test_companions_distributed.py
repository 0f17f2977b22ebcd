"""Barlow Twins (both forms of ||C||^2) and W-MSE on 2 real gloo ranks: each rank's loss value and every
parameter gradient equal one process on the global batch.

Float64 throughout, so a mismatch is a real one and not summation order. Rank r holds the rows
r, r + W, r + 2W, ... (not a contiguous block), so W-MSE's sub-batches only match the single process
because they are drawn over the rows ordered by their dataset index, not by their position on a rank.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.parts import twin_model
from tests.test_distributed import _free_port
from twist.config import load_config
from twist.distributed import all_gather_cat, all_reduce_mean, reduce_for_logging, synchronise_batch_norms
from twist.losses import BarlowTwinsLoss, WMSELoss

WORLD, GLOBAL_BATCH, NUM_VIEWS = 2, 8, 3
METHODS = {
    "barlow_twins": ["method=barlow_twins", "barlow_twins.hidden_dim=12", "barlow_twins.out_dim=6"],
    "barlow_twins_gram": ["method=barlow_twins", "barlow_twins.hidden_dim=12", "barlow_twins.out_dim=6"],
    "wmse": ["method=wmse", "wmse.hidden_dim=12", "wmse.out_dim=3", "wmse.w_size=4", f"wmse.num_samples={NUM_VIEWS}"],
}
COMMON = ["data.dataset=synthetic", "model.backbone=resnet18", "data.image_size=16", f"train.batch_size={GLOBAL_BATCH}"]


def _model(method):
    torch.manual_seed(0)
    return twin_model(load_config(None, COMMON + METHODS[method])).double()


def _views(method):
    generator = torch.Generator().manual_seed(1)
    count = 2 if method.startswith("barlow_twins") else NUM_VIEWS
    return [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=generator, dtype=torch.float64) for _ in range(count)]


def _loss(method, outputs, indices, distributed):
    if method.startswith("barlow_twins"):  # ||C||^2 from the all-reduced D x D matrix, or the gathered Gram rows
        collectives = dict(batch_mean=all_reduce_mean, gather=all_gather_cat) if distributed else {}
        form = "gram" if method == "barlow_twins_gram" else "matrix"
        return BarlowTwinsLoss(lam=0.02, form=form, **collectives)(outputs)
    loss = WMSELoss(w_size=4, w_iter=2, w_eps=0.01, gather=all_gather_cat if distributed else lambda t: t)
    return loss(outputs, torch.Generator().manual_seed(5), keys=indices)


def _rank_main(rank, method, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = _model(method)
    synchronise_batch_norms(model.backbone, WORLD, "cpu")
    synchronise_batch_norms(model.head.mlp, WORLD, "cpu")
    model = DistributedDataParallel(model)
    indices = torch.arange(rank, GLOBAL_BATCH, WORLD)
    terms = _loss(method, model([v[indices] for v in _views(method)]), indices, distributed=True)
    terms["loss"].backward()
    logged = reduce_for_logging(torch.stack(list(terms.values())))
    if rank == 0:
        grads = {n: p.grad for n, p in model.module.named_parameters()}
        torch.save({"logged": logged, "rank0": torch.stack(list(terms.values())).detach(), "grads": grads}, out_path)
    dist.destroy_process_group()


@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_equal_one_process_on_the_global_batch(method, tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_main, args=(method, _free_port(), out), nprocs=WORLD, join=True)
    result = torch.load(out, weights_only=True)

    model = _model(method).train()
    terms = _loss(method, model(_views(method)), torch.arange(GLOBAL_BATCH), distributed=False)
    terms["loss"].backward()
    expected = torch.stack(list(terms.values())).detach()
    torch.testing.assert_close(result["logged"], expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result["rank0"], expected, rtol=1e-9, atol=1e-12)  # each rank has the global loss
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads.keys() == result["grads"].keys()
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-7, atol=1e-9, msg=name)
