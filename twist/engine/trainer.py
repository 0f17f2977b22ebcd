"""The pretraining run: one loop that reads top to bottom.

config → dataset → views (2 global + L local) → twin model (backbone per resolution → head → NBS)
→ TWIST loss, or the self-labeling loss from its start epoch → optimiser step with the scheduled lr
and wd → EMA teacher update → log → periodic atomic checkpoint; then backbone export and evaluation.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from twist.atomic import atomic_write
from twist.config import ConfigError, save_config
from twist.data import (EpochSampler, EvalDataset, ViewsDataset, build_eval_transform, build_source,
                        build_train_transform, collate_views)
from twist.engine.checkpoint import atomic_torch_save, load_weights_only, rng_state, set_rng_state
from twist.engine.logging import RunLog, plot_training_curves
from twist.engine.optim import apply_schedules, build_optimizer, build_schedules
from twist.eval.cluster import evaluate_clusters
from twist.losses import SelfLabelLoss, TwistLoss
from twist.models import build_model
from twist.models.teacher import EMATeacher

CHECKPOINT = "checkpoint.pth"
BACKBONE = "backbone.pth"
TEACHER_BACKBONE = "teacher_backbone.pth"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good state."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_train_loader(cfg: dict[str, Any], device: torch.device) -> tuple[DataLoader, EpochSampler]:
    data = cfg["data"]
    sl = cfg["self_label"]
    later = [(sl["start_epoch"], build_train_transform(cfg, self_labeling=True))] if sl["enabled"] else []
    dataset = ViewsDataset(build_source(cfg, "train"), build_train_transform(cfg), cfg["seed"],
                           skip_corrupt=data["skip_corrupt"], later_stages=later)
    sampler = EpochSampler(len(dataset), cfg["train"]["batch_size"], seed=cfg["seed"])
    workers = data["num_workers"]
    loader = DataLoader(dataset, batch_size=cfg["train"]["batch_size"], sampler=sampler, num_workers=workers,
                        collate_fn=collate_views, pin_memory=data["pin_memory"] and device.type == "cuda",
                        persistent_workers=data["persistent_workers"] and workers > 0, drop_last=True,
                        prefetch_factor=data["prefetch_factor"] if workers > 0 else None,
                        # Its own generator: creating an iterator then draws no number from the global
                        # stream, which the model's dropout uses and a resumed run restores.
                        generator=torch.Generator().manual_seed(cfg["seed"]))
    return loader, sampler


def build_eval_loader(cfg: dict[str, Any]) -> DataLoader:
    split = "val" if cfg["data"]["dataset"] in ("folder", "lmdb") else "train"
    dataset = EvalDataset(build_source(cfg, split), build_eval_transform(cfg))
    return DataLoader(dataset, batch_size=cfg["eval"]["batch_size"], shuffle=False,
                      num_workers=cfg["data"]["num_workers"])


def save_checkpoint(path: str, model, teacher, optimizer, scaler, step: int, epoch: int,
                    cfg: dict[str, Any]) -> None:
    state = {
        "model": model.state_dict(),
        "backbone": model.backbone.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": rng_state(),
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


def train(cfg: dict[str, Any], output_dir: str, max_steps: int | None = None) -> dict[str, Any]:
    """Pretrain (resuming from ``output_dir/checkpoint.pth`` if present) and evaluate.

    ``max_steps`` stops the run after that many optimiser steps in total, with a checkpoint, as a
    job that runs out of time would; running again continues from there.
    """
    os.makedirs(output_dir, exist_ok=True)
    device = resolve_device(cfg["device"])
    amp_dtype = autocast_dtype(cfg["train"]["precision"], device)
    seed_everything(cfg["seed"])

    loader, sampler = build_train_loader(cfg, device)
    model = build_model(cfg).to(device)
    teacher = EMATeacher(build_model(cfg), model).to(device) if cfg["teacher"]["enabled"] else None
    twist_loss = TwistLoss(**cfg["loss"])
    self_label_loss = SelfLabelLoss(cfg["loss"]["tau"])
    optimizer = build_optimizer(model, cfg["optim"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    epochs, steps_per_epoch = cfg["train"]["epochs"], sampler.batches_per_epoch
    total_steps = epochs * steps_per_epoch
    schedules = build_schedules(cfg, steps_per_epoch, global_batch=cfg["train"]["batch_size"])
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
        set_rng_state(state["rng"])
        step = state["step"]
        print(f"resumed from {checkpoint_path} at step {step} (epoch {step // steps_per_epoch})")
    save_config(cfg, os.path.join(output_dir, "config.yaml"))
    log = RunLog(output_dir)
    stop_at = total_steps if max_steps is None else min(max_steps, total_steps)
    checkpoint_every = cfg["train"]["checkpoint_every"]
    bar = _progress(stop_at, step, cfg["train"]["progress_bar"])
    model.train()
    skipped_total, window_start, window_images = 0, time.perf_counter(), 0

    while step < stop_at:
        epoch, start_batch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start_batch)
        for batch in loader:
            apply_schedules(optimizer, schedules, step, cfg["optim"]["bias_lr_ratio"])
            if batch is None:  # every image of the batch was corrupt and skipped
                skipped_total += cfg["train"]["batch_size"]
                step += 1
                continue
            views, _, _, skipped = batch
            skipped_total += skipped
            views = [v.to(device, non_blocking=True) for v in views]

            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(views)
                teacher_logits = teacher(views[:2]) if teacher is not None else None  # globals only
            if step >= self_label_from:
                terms = self_label_loss(logits, float(schedules["quantile"][step]), teacher_logits)
            else:
                terms = twist_loss(logits, teacher_logits)
            optimizer_step(terms["loss"], model, optimizer, scaler, cfg["optim"]["clip_grad_norm"])
            if teacher is not None:
                teacher.update(model, float(schedules["momentum"][step]))
            step += 1
            window_images += views[0].shape[0]
            bar.update(1)

            if step % cfg["train"]["log_every"] == 0 or step == stop_at:
                values = {k: v.item() for k, v in terms.items()}
                if not math.isfinite(values["loss"]):
                    raise TrainingDiverged(f"loss is {values['loss']} at step {step}; "
                                           f"the last good state is {checkpoint_path}")
                elapsed = time.perf_counter() - window_start
                stage = "self_label" if step > self_label_from else "twist"
                record = {"kind": "train", "stage": stage, "step": step, "epoch": epoch, **values,
                          "lr": optimizer.param_groups[0]["lr"],
                          "weight_decay": optimizer.param_groups[0]["weight_decay"],
                          "images_per_s": window_images / max(elapsed, 1e-9), "skipped_images": skipped_total}
                log.write(record)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.3g}",
                                img_s=f"{record['images_per_s']:.0f}")
                window_start, window_images = time.perf_counter(), 0
            if checkpoint_every and step % checkpoint_every == 0:
                save_checkpoint(checkpoint_path, model, teacher, optimizer, scaler, step, epoch, cfg)
            if step >= stop_at:
                break
        if step % steps_per_epoch == 0 or step >= stop_at:
            save_checkpoint(checkpoint_path, model, teacher, optimizer, scaler, step, step // steps_per_epoch, cfg)
            log.write({"kind": "epoch", "step": step, "epoch": epoch, "skipped_images": skipped_total})
    bar.close()

    atomic_torch_save(model.backbone.state_dict(), os.path.join(output_dir, BACKBONE))
    if teacher is not None:
        atomic_torch_save(teacher.model.backbone.state_dict(), os.path.join(output_dir, TEACHER_BACKBONE))
    result: dict[str, Any] = {"step": step, "finished": step >= total_steps}
    if step >= total_steps and cfg["eval"]["enabled"]:
        metrics = evaluate_clusters(model, build_eval_loader(cfg), device, cfg["model"]["head"]["num_classes"],
                                    cfg["seed"], amp_dtype, kmeans=cfg["eval"]["kmeans_baseline"])
        atomic_write(os.path.join(output_dir, "metrics.json"), lambda f: json.dump(metrics, f, indent=2),
                     binary=False)
        log.write({"kind": "eval", "step": step, **{k: v for k, v in metrics.items() if k != "baseline"}})
        result["metrics"] = metrics
    log.close()
    if step >= total_steps:
        plot_training_curves(log.path, os.path.join(output_dir, "training_curves.png"))
    return result
