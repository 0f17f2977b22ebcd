"""The epoch loop of the supervised protocols (linear probe, semi-supervised fine-tuning).

SGD with a cosine learning rate stepped per epoch (the reference's ``CosineAnnealingLR`` with
``eta_min=0``), an evaluation every ``eval_every`` epochs and after the last, and a checkpoint after
every epoch, written atomically: a run that is stopped resumes from its last finished epoch, with the
same data order and augmentations, since both are functions of (seed, epoch, index).
"""
from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from twist.distributed import reduce_for_logging
from twist.engine.checkpoint import atomic_torch_save, load_weights_only
from twist.engine.logging import RunLog
from twist.eval.session import EvalSession
from twist.losses.twist import at_least_float32

CHECKPOINT = "checkpoint.pth"


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def normal_init_classifier(in_dim: int, num_classes: int) -> nn.Linear:
    """The probes' classifier: weights N(0, 0.01), zero bias."""
    classifier = nn.Linear(in_dim, num_classes)
    nn.init.normal_(classifier.weight, mean=0.0, std=0.01)
    nn.init.zeros_(classifier.bias)
    return classifier


def topk_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    target = labels[:, None].to(ranked.device)
    return int((ranked[:, :1] == target).sum()), int((ranked == target).any(dim=1).sum())


def classification_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                        labels: torch.Tensor, autocast_dtype: torch.dtype | None,
                        scaler: torch.amp.GradScaler) -> torch.Tensor:
    """One SGD step on the cross-entropy; under DDP the gradient is that of the global batch's mean."""
    with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = F.cross_entropy(at_least_float32(model(inputs)), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def per_rank_batch(session: EvalSession, key: str, global_batch: int) -> int:
    from twist.config import ConfigError

    world = session.env.world_size
    if global_batch % world:
        raise ConfigError(f"'{key}' ({global_batch}) is the global batch and must be divisible by the number of "
                          f"processes ({world})")
    return global_batch // world


def fit(session: EvalSession, trained: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, eval_every: int,
        train_epoch: Callable[[int], torch.Tensor], evaluate: Callable[[], tuple[float, float]],
        desc: str) -> list[dict]:
    """Run the remaining epochs of a run in ``session.output_dir`` and return every epoch's record.

    ``train_epoch(epoch)`` trains one epoch and returns the mean loss on this rank; ``evaluate()``
    returns the (top-1, top-5) accuracy on the val split. ``trained`` holds every trained weight.
    """
    from tqdm import tqdm

    env = session.env
    path = os.path.join(session.output_dir, CHECKPOINT)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    start, history = 0, []
    if os.path.exists(path):
        state = load_weights_only(path)
        trained.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]
        if env.is_main:
            print(f"{desc}: resumed from {path} after epoch {start}")
    log = RunLog(session.output_dir, tensorboard=False) if env.is_main else None
    bar = tqdm(total=epochs, initial=start, desc=desc, unit="epoch", dynamic_ncols=True,
               disable=not (session.cfg["progress_bar"] and env.is_main))
    for epoch in range(start, epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(group["base_lr"], epoch, epochs)
        loss = float(reduce_for_logging(train_epoch(epoch).double().reshape(1))[0])
        record = {"kind": "epoch", "epoch": epoch + 1, "loss": loss, "lr": optimizer.param_groups[0]["lr"]}
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            record["top1"], record["top5"] = evaluate()
        history.append(record)
        if env.is_main:
            log.write(record)
            atomic_torch_save({"model": trained.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": epoch + 1, "history": history}, path)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", **({"top1": f"{record['top1']:.4f}"} if "top1" in record else {}))
    bar.close()
    if log is not None:
        log.close()
    return history


def summarise(history: list[dict]) -> dict:
    """The final and best evaluated accuracies of a run's history."""
    evaluated = [r for r in history if "top1" in r]
    best = max(evaluated, key=lambda r: r["top1"])
    return {"top1": evaluated[-1]["top1"], "top5": evaluated[-1]["top5"], "best_top1": best["top1"],
            "best_epoch": best["epoch"], "epochs": history[-1]["epoch"], "history": history}
