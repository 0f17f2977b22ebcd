"""The pretraining run: one loop that reads top to bottom.

config → dataset → views (2 global + L local) → twin model (backbone per resolution → head → NBS)
→ TWIST loss, or the self-labeling loss from its start epoch → optimiser step with the scheduled lr
and wd → EMA teacher update → log → periodic atomic checkpoint; then backbone export and evaluation.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from twist.atomic import atomic_write
from twist.config import ConfigError, save_config
from twist.data import DatasetError, EpochSampler, ViewsDataset, build_source, build_train_transform, collate_views
from twist.data.device_augment import DeviceAugment, build_view_planner, collate_planned, view_sizes
from twist.distributed import (DistEnv, all_gather_cat, all_reduce_mean, init_distributed, reduce_for_logging,
                               synchronise_batch_norms, world_size)
from twist.engine.checkpoint import CheckpointError, atomic_torch_save, load_weights_only, rng_state, set_rng_state
from twist.engine.logging import RunLog, plot_training_curves
from twist.engine.optim import apply_schedules, build_optimizer, build_schedules
from twist.engine.runtime import autocast_dtype, resolve_device, seed_everything
from twist.eval.cluster import evaluate_clusters
from twist.losses import BarlowTwinsLoss, SelfLabelLoss, TwistLoss, WMSELoss
from twist.models import build_model
from twist.models.teacher import EMATeacher

CHECKPOINT = "checkpoint.pth"
BACKBONE = "backbone.pth"
TEACHER_BACKBONE = "teacher_backbone.pth"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good state."""


def build_train_loader(cfg: dict[str, Any], device: torch.device,
                       env: DistEnv = DistEnv()) -> tuple[DataLoader, EpochSampler]:
    data = cfg["data"]
    sl = cfg["self_label"]
    # With augment.on_device the workers return the decoded image and every view's drawn parameters.
    build, collate = ((build_view_planner, collate_planned) if cfg["augment"]["on_device"]
                      else (build_train_transform, collate_views))
    later = [(sl["start_epoch"], build(cfg, self_labeling=True))] if sl["enabled"] else []
    dataset = ViewsDataset(build_source(cfg, data["train_split"]), build(cfg), cfg["seed"],
                           skip_corrupt=data["skip_corrupt"], later_stages=later)
    sampler = EpochSampler(len(dataset), cfg["train"]["batch_size"], seed=cfg["seed"], rank=env.rank,
                           world_size=env.world_size)
    workers = data["num_workers"]
    loader = DataLoader(dataset, batch_size=cfg["train"]["batch_size"], sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=data["pin_memory"] and device.type == "cuda",
                        persistent_workers=data["persistent_workers"] and workers > 0, drop_last=True,
                        prefetch_factor=data["prefetch_factor"] if workers > 0 else None,
                        # Its own generator: creating an iterator then draws no number from the global
                        # stream, which the model's dropout uses and a resumed run restores.
                        generator=torch.Generator().manual_seed(cfg["seed"]))
    return loader, sampler


def gathered_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state (each rank draws its own dropout), so that a resume restores all of them."""
    states = [rng_state()]
    if world_size() > 1:
        states = [None] * world_size()
        torch.distributed.all_gather_object(states, rng_state())
    return states


def save_checkpoint(path: str, model, teacher, optimizer, scaler, step: int, epoch: int,
                    cfg: dict[str, Any], rng_states: list[dict[str, Any]]) -> None:
    state = {
        "model": model.state_dict(),
        "backbone": model.backbone.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": rng_states,
        "config": cfg,
    }
    if teacher is not None:
        state["teacher"] = teacher.model.state_dict()
        state["teacher_backbone"] = teacher.model.backbone.state_dict()
    atomic_torch_save(state, path)


def optimizer_step(loss: torch.Tensor, model, optimizer, scaler: torch.amp.GradScaler, clip_grad_norm: float) -> None:
    """Backward, optional clipping of the global gradient norm, step; the same in every precision."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step")


def nbs_ranks_per_bunch(cfg: dict[str, Any], world: int) -> int:
    """How many consecutive ranks share NBS statistics: ``model.head.nbs_bunch_size`` images, or all."""
    bunch, batch = cfg["model"]["head"]["nbs_bunch_size"], cfg["train"]["batch_size"]
    if bunch == 0:
        return world
    if bunch % batch or world % (bunch // batch):
        raise ConfigError(f"model.head.nbs_bunch_size={bunch} must be a multiple of train.batch_size={batch}, and "
                          f"the world size ({world}) a multiple of bunch/batch ({bunch / batch:g}) ranks")
    return bunch // batch


def build_distributed_model(cfg: dict[str, Any], device: torch.device, env: DistEnv):
    """The twin model on ``device``; across ranks, every batch norm synchronised (TWIST's NBS per bunch)."""
    model = build_model(cfg).to(device)
    if env.enabled:
        synchronise_batch_norms(model.backbone, env.world_size, device.type)
        synchronise_batch_norms(model.head.mlp, env.world_size, device.type)
        if cfg["method"] == "twist":
            synchronise_batch_norms(model.head, nbs_ranks_per_bunch(cfg, env.world_size), device.type)
    if cfg["train"]["channels_last"]:
        model.backbone.to(memory_format=torch.channels_last)
    if cfg["train"]["compile"]:
        model.backbone.compile()  # in place: the state-dict keys stay those of the plain module
    return model


class MethodLoss:
    """The objective of ``cfg['method']`` as one call: ``(outputs, step, indices) -> terms``.

    Every objective reduces exactly across ranks: the loss and its gradients are those of the global
    batch. W-MSE's random sub-batches come from a generator seeded by (seed, step), the same on every
    rank and again after a resume.
    """

    def __init__(self, cfg: dict[str, Any]):
        self.method, self.seed = cfg["method"], cfg["seed"]
        if self.method == "barlow_twins":
            self.loss = BarlowTwinsLoss(cfg["barlow_twins"]["lam"], batch_mean=all_reduce_mean, gather=all_gather_cat)
        elif self.method == "wmse":
            wm = cfg["wmse"]
            self.loss = WMSELoss(wm["w_size"], wm["w_iter"], wm["w_eps"], wm["normalize"], gather=all_gather_cat)
        else:
            self.loss = TwistLoss(**cfg["loss"], batch_mean=all_reduce_mean)

    def __call__(self, outputs, step: int, indices: torch.Tensor, teacher_outputs=None) -> dict[str, torch.Tensor]:
        if self.method == "wmse":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return self.loss(outputs, generator, keys=indices)
        if self.method == "barlow_twins":
            return self.loss(outputs)
        return self.loss(outputs, teacher_outputs)


def train(cfg: dict[str, Any], output_dir: str, max_steps: int | None = None) -> dict[str, Any]:
    """Pretrain (resuming from ``output_dir/checkpoint.pth`` if present) and evaluate.

    Runs alone, or as one rank of a ``torchrun``/SLURM job: then every batch norm spans the ranks,
    the loss is that of the global batch, and only rank 0 writes files. ``max_steps`` stops the run
    after that many optimiser steps in total, with a checkpoint, as a job that runs out of time
    would; running again continues from there.
    """
    device = resolve_device(cfg["device"])
    env = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    if env.is_main:
        os.makedirs(output_dir, exist_ok=True)
    amp_dtype = autocast_dtype(cfg["train"]["precision"], device)
    seed_everything(cfg["seed"])  # the same initial weights on every rank

    loader, sampler = build_train_loader(cfg, device, env)
    model = build_distributed_model(cfg, device, env)
    teacher = (EMATeacher(build_distributed_model(cfg, device, env), model) if cfg["teacher"]["enabled"]
               else None)
    global_batch = cfg["train"]["batch_size"] * env.world_size
    if cfg["method"] == "wmse" and global_batch % cfg["wmse"]["w_size"]:
        raise ConfigError(f"the global batch ({cfg['train']['batch_size']} x {env.world_size} processes = {global_batch}) "
                          f"must be a multiple of wmse.w_size ({cfg['wmse']['w_size']})")
    method_loss = MethodLoss(cfg)
    self_label_loss = SelfLabelLoss(cfg["loss"]["tau"])
    optimizer = build_optimizer(model, cfg["optim"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    epochs, steps_per_epoch = cfg["train"]["epochs"], sampler.batches_per_epoch
    total_steps = epochs * steps_per_epoch
    schedules = build_schedules(cfg, steps_per_epoch, global_batch=global_batch)
    self_label_from = (cfg["self_label"]["start_epoch"] * steps_per_epoch if cfg["self_label"]["enabled"]
                       else total_steps)

    step = 0
    checkpoint_path = os.path.join(output_dir, CHECKPOINT)
    if os.path.exists(checkpoint_path):
        state = load_weights_only(checkpoint_path)
        model.load_state_dict(state["model"])
        if teacher is not None:
            teacher.model.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) != env.world_size:
            raise CheckpointError(f"checkpoint '{checkpoint_path}' was written by {len(state['rng'])} ranks; "
                                  f"resume it with the same number ({env.world_size} now)")
        set_rng_state(state["rng"][env.rank])
        step = state["step"]
        if env.is_main:
            print(f"resumed from {checkpoint_path} at step {step} (epoch {step // steps_per_epoch})")
    else:
        torch.manual_seed(cfg["seed"] + env.rank)  # each rank its own dropout stream
    # Only rank 0 writes; the others keep no handle on the output directory.
    if env.is_main:
        save_config(cfg, os.path.join(output_dir, "config.yaml"))
    log = RunLog(output_dir) if env.is_main else None
    stop_at = total_steps if max_steps is None else min(max_steps, total_steps)
    checkpoint_every = cfg["train"]["checkpoint_every"]
    bar = _progress(stop_at, step, cfg["train"]["progress_bar"] and env.is_main)
    raw_model = model
    if env.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()

    def checkpoint(epoch: int) -> None:
        rng_states = gathered_rng_states()  # collective: every rank takes part
        if env.is_main:
            save_checkpoint(checkpoint_path, raw_model, teacher, optimizer, scaler, step, epoch, cfg, rng_states)

    skipped_total, window_start, window_images = 0, time.perf_counter(), 0
    memory_format = torch.channels_last if cfg["train"]["channels_last"] else torch.contiguous_format
    device_augment = DeviceAugment(view_sizes(cfg)).to(device) if cfg["augment"]["on_device"] else None

    while step < stop_at:
        epoch, start_batch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start_batch)
        for batch in loader:
            apply_schedules(optimizer, schedules, step, cfg["optim"]["bias_lr_ratio"])
            if batch is None:  # every image of the batch was corrupt and skipped
                if env.enabled:  # the other ranks are about to enter collectives this rank would skip
                    raise DatasetError(f"rank {env.rank}: every image of a batch at step {step} is unreadable; "
                                       f"fix or remove those files")
                skipped_total += cfg["train"]["batch_size"]
                step += 1
                continue
            views, _, indices, skipped = batch
            skipped_total += skipped
            if device_augment is not None:
                images, plans = views
                views = device_augment(images.to(device, non_blocking=True), plans)  # plans stay on the host
            views = [v.to(device, non_blocking=True, memory_format=memory_format) for v in views]

            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(views)
                teacher_logits = teacher(views[:2]) if teacher is not None else None  # globals only
            if step >= self_label_from:
                terms = self_label_loss(logits, float(schedules["quantile"][step]), teacher_logits)
            else:
                terms = method_loss(logits, step, indices, teacher_logits)
            optimizer_step(terms["loss"], model, optimizer, scaler, cfg["optim"]["clip_grad_norm"])
            if teacher is not None:
                teacher.update(raw_model, float(schedules["momentum"][step]))
            step += 1
            window_images += views[0].shape[0]
            bar.update(1)

            if step % cfg["train"]["log_every"] == 0 or step == stop_at:
                names = list(terms)
                reduced = reduce_for_logging(torch.stack([terms[k].detach().float() for k in names]))
                values = dict(zip(names, reduced.tolist()))  # means over ranks: the global figures
                if not math.isfinite(values["loss"]):
                    raise TrainingDiverged(f"loss is {values['loss']} at step {step}; "
                                           f"the last good state is {checkpoint_path}")
                elapsed = time.perf_counter() - window_start
                stage = "self_label" if step > self_label_from else cfg["method"]
                record = {"kind": "train", "stage": stage, "step": step, "epoch": epoch, **values,
                          "lr": optimizer.param_groups[0]["lr"],
                          "weight_decay": optimizer.param_groups[0]["weight_decay"],
                          "images_per_s": env.world_size * window_images / max(elapsed, 1e-9),
                          "skipped_images": skipped_total}
                if log is not None:
                    log.write(record)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.3g}",
                                img_s=f"{record['images_per_s']:.0f}")
                window_start, window_images = time.perf_counter(), 0
            if checkpoint_every and step % checkpoint_every == 0:
                checkpoint(epoch)
            if step >= stop_at:
                break
        if step % steps_per_epoch == 0 or step >= stop_at:
            checkpoint(step // steps_per_epoch)
            if log is not None:
                log.write({"kind": "epoch", "step": step, "epoch": epoch, "skipped_images": skipped_total})
    bar.close()
    result: dict[str, Any] = {"step": step, "finished": step >= total_steps}
    if not env.is_main:
        return result
    model = raw_model

    atomic_torch_save(model.backbone.state_dict(), os.path.join(output_dir, BACKBONE))
    if teacher is not None:
        atomic_torch_save(teacher.model.backbone.state_dict(), os.path.join(output_dir, TEACHER_BACKBONE))
    if step >= total_steps and cfg["eval"]["enabled"]:
        metrics = evaluate_clusters(model, cfg, device, amp_dtype, kmeans=cfg["eval"]["kmeans_baseline"])
        atomic_write(os.path.join(output_dir, "metrics.json"), lambda f: json.dump(metrics, f, indent=2),
                     binary=False)
        log.write({"kind": "eval", "step": step, **{k: v for k, v in metrics.items() if k != "baseline"}})
        result["metrics"] = metrics
    log.close()
    if step >= total_steps:
        plot_training_curves(log.path, os.path.join(output_dir, "training_curves.png"))
    return result
