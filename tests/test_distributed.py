"""Real multi-process (gloo) checks: on W ranks with B samples each, the TWIST loss value and every
parameter gradient equal those of one process on the same W x B samples, with the NBS statistics
synchronised over all ranks or over bunches of consecutive ranks."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tests.parts import twin_model
from twist.config import load_config
from twist.distributed import SyncedBatchNorm, all_reduce_mean, reduce_for_logging, synchronise_batch_norms
from twist.losses import TwistLoss

GLOBAL_BATCH = 8
MODEL = ["data.dataset=synthetic", "model.backbone=resnet18", "data.image_size=16", "model.head.hidden_dim=16",
         "model.head.num_classes=6", "model.head.dropout=0.0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=generator, dtype=torch.float64) for _ in range(3)]
    views.append(torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=generator, dtype=torch.float64))  # a local view
    return views


def _fresh_model():
    """Float64 throughout, so that any mismatch is a real one and not summation order."""
    torch.manual_seed(0)
    return twin_model(load_config(None, MODEL)).double()


def _rank_main(rank, world, bunch, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _fresh_model()
    synchronise_batch_norms(model.backbone, world, "cpu")
    synchronise_batch_norms(model.head.mlp, world, "cpu")
    synchronise_batch_norms(model.head, bunch, "cpu")  # the NBS, over this rank's bunch
    model = DistributedDataParallel(model)
    per_rank = GLOBAL_BATCH // world
    views = [v[rank * per_rank:(rank + 1) * per_rank] for v in _inputs()]
    terms = TwistLoss(lam1=0.3, lam2=1.0, batch_mean=all_reduce_mean)(model(views))
    terms["loss"].backward()
    logged = reduce_for_logging(torch.stack([terms[k] for k in ("loss", "consistency", "sharpness", "diversity")]))
    if rank == 0:
        grads = {n: p.grad for n, p in model.module.named_parameters()}
        torch.save({"logged": logged, "grads": grads}, out_path)
    dist.destroy_process_group()


def _single_process(bunches: int):
    """One process on the whole batch; with bunches, the NBS normalises each bunch's rows on its own."""
    model = _fresh_model().train()
    views = _inputs()
    features = model.features(views)
    pre = model.head.last_linear(model.head.mlp(features))
    num_views, rows = len(views), GLOBAL_BATCH // bunches
    logits = torch.empty_like(pre)
    for b in range(bunches):
        index = torch.cat([torch.arange(v * GLOBAL_BATCH + b * rows, v * GLOBAL_BATCH + (b + 1) * rows)
                           for v in range(num_views)])
        logits[index] = F.batch_norm(pre[index], None, None, training=True, eps=1e-5)
    terms = TwistLoss(lam1=0.3, lam2=1.0)(list(logits.chunk(num_views)))
    terms["loss"].backward()
    logged = torch.stack([terms[k] for k in ("loss", "consistency", "sharpness", "diversity")]).detach()
    return logged, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("world,bunch", [(2, 2), (4, 4), (4, 2)])
def test_loss_and_gradients_equal_one_process_on_the_global_batch(tmp_path, world, bunch):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_main, args=(world, bunch, _free_port(), out), nprocs=world, join=True)
    result = torch.load(out, weights_only=True)
    logged, grads = _single_process(bunches=world // bunch)
    torch.testing.assert_close(result["logged"], logged, rtol=1e-9, atol=1e-12)
    assert grads.keys() == result["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-7, atol=1e-9, msg=name)


def test_synced_batch_norm_without_a_group_is_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(16, 5, 3, 3)
    ours, reference = SyncedBatchNorm(5, ranks_per_bunch=1), torch.nn.BatchNorm2d(5)
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours.running_var, reference.running_var)
