"""Linear probe: a linear classifier on the frozen backbone's features.

The backbone stays in eval mode throughout (its batch-norm statistics are frozen). The defaults are
the paper's ResNet-50 protocol: SGD (momentum 0.9, no weight decay), lr 0.2 for a global batch of
1024, 100 epochs, cosine per epoch, random-resized crops and flips. Modes:

- ``augmented``: the paper's protocol; the backbone runs on every training crop.
- ``cached``: the features of the un-augmented training images are extracted once and the
  classifier trains on them; far faster, and the default (``auto``) for small datasets.
- ``uncached``: like ``cached`` but the backbone runs at every step (when the features do not fit
  in memory); it gives the same classifier as ``cached``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from twist.data import EpochSampler, ViewsDataset, collate_views
from twist.data.transforms import MultiView
from twist.eval.features import extract_features
from twist.eval.session import EvalSession
from twist.eval.supervised import (
    classification_step,
    fit,
    normal_init_classifier,
    per_rank_batch,
    summarise,
    topk_correct,
)


def resolve_mode(mode: str, num_train: int, cache_max_images: int) -> str:
    if mode != "auto":
        return mode
    return "cached" if num_train <= cache_max_images else "augmented"


def num_classes_of(source, labels: torch.Tensor) -> int:
    return max(len(getattr(source, "classes", [])), int(labels.max()) + 1 if len(labels) else 0)


def epoch_sampler(session: EvalSession, num_samples: int, batch: int, key: str) -> EpochSampler:
    env = session.env
    try:
        return EpochSampler(num_samples, batch, seed=session.cfg["seed"], rank=env.rank, world_size=env.world_size)
    except ValueError as err:
        from twist.config import ConfigError

        raise ConfigError(f"'{key}': {err}") from None


def _cached_epoch(model, optimizer, scaler, sampler, batch: int, feats: torch.Tensor, labels: torch.Tensor,
                  device: torch.device) -> Callable[[int], torch.Tensor]:
    """One epoch of the classifier over features extracted once (the mean loss)."""
    def train_epoch(epoch: int) -> torch.Tensor:
        sampler.set_epoch(epoch)
        order = torch.tensor([index for _, index in sampler]).view(-1, batch)
        losses = [classification_step(model, optimizer, feats[rows].to(device), labels[rows].to(device), None,
                                      scaler) for rows in order]
        return torch.stack(losses).mean()
    return train_epoch


def _streamed_epoch(session: EvalSession, source, model, optimizer, scaler, sampler, batch: int, extractor,
                    view) -> Callable[[int], torch.Tensor]:
    """One epoch of the classifier over images read (and, with the training view, augmented) anew."""
    cfg, device = session.cfg, session.device
    dataset = ViewsDataset(source, MultiView([view]), cfg["seed"])
    workers = cfg["data"]["num_workers"]
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        collate_fn=collate_views, pin_memory=cfg["data"]["pin_memory"] and device.type == "cuda",
                        persistent_workers=workers > 0)
    dtype = session.autocast_dtype

    def train_epoch(epoch: int) -> torch.Tensor:
        sampler.set_epoch(epoch)
        losses = []
        for views, labels, _, _ in loader:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                feats = extractor(views[0].to(device, non_blocking=True)).float()
            losses.append(classification_step(model, optimizer, feats, labels.to(device), None, scaler))
        return torch.stack(losses).mean()
    return train_epoch


@torch.no_grad()
def _top_accuracies(classifier, feats: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[float, float]:
    top1 = top5 = 0
    for start in range(0, len(feats), 8192):
        c1, c5 = topk_correct(classifier(feats[start:start + 8192].to(device)), labels[start:start + 8192])
        top1, top5 = top1 + c1, top5 + c5
    return top1 / len(feats), top5 / len(feats)


def run_linear(session: EvalSession) -> dict[str, Any]:
    cfg, env, device = session.cfg, session.env, session.device
    lin = cfg["linear"]
    progress = cfg["progress_bar"]
    train_source, val_source = session.train_and_val_sources()
    mode = resolve_mode(lin["mode"], len(train_source), lin["cache_max_images"])
    train_view, eval_view = session.transforms()
    extractor = session.feature_extractor().eval()  # frozen, batch-norm statistics included, throughout
    for param in extractor.parameters():
        param.requires_grad_(False)
    extract = dict(batch_size=cfg["features"]["batch_size"], num_workers=cfg["data"]["num_workers"], device=device,
                   env=env, autocast_dtype=session.autocast_dtype, progress=progress)
    val_feats, val_labels = extract_features(extractor, session.eval_dataset(val_source), desc="val features",
                                             **extract)
    if mode == "cached":
        train_feats, train_labels = extract_features(extractor, session.eval_dataset(train_source),
                                                     desc="train features", **extract)
        num_classes = num_classes_of(train_source, train_labels)
    else:
        from twist.eval.subsets import source_labels

        num_classes = num_classes_of(train_source, torch.as_tensor(source_labels(train_source)))

    torch.manual_seed(cfg["seed"])
    classifier = normal_init_classifier(extractor.feature_dim, num_classes).to(device)
    model = DistributedDataParallel(classifier) if env.enabled else classifier
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lin["lr"], momentum=lin["momentum"],
                                weight_decay=lin["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=session.autocast_dtype == torch.float16)
    batch = per_rank_batch(session, "linear.batch_size", lin["batch_size"])
    sampler = epoch_sampler(session, len(train_source), batch, "linear.batch_size")

    if mode == "cached":
        train_epoch = _cached_epoch(model, optimizer, scaler, sampler, batch, train_feats, train_labels, device)
    else:
        train_epoch = _streamed_epoch(session, train_source, model, optimizer, scaler, sampler, batch, extractor,
                                      train_view if mode == "augmented" else eval_view)

    def evaluate() -> tuple[float, float]:
        return _top_accuracies(classifier, val_feats, val_labels, device)

    history = fit(session, classifier, optimizer, lin["epochs"], lin["eval_every"], train_epoch, evaluate,
                  desc="linear")
    results = {**session.describe(), "mode": mode, "feature_dim": extractor.feature_dim,
               "num_classes": num_classes, "num_train": len(train_source), "num_val": len(val_source),
               **summarise(history)}
    session.write_json("results.json", results)
    return results
