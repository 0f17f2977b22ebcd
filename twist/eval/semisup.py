"""Semi-supervised fine-tuning: backbone and a new linear head trained on a labelled subset.

The subset is the images named in ``semisup.subset_file`` (ImageNet 1% / 10%: SimCLR's split files,
read from a local path) or a seeded class-balanced ``semisup.fraction`` of the train split. The
backbone and head get their own learning rates (the paper's 10% recipe: 0.02 and 0.2; 1%: 0.04 and
0.2; 20 epochs, batch 256, no weight decay). The model trains in train mode; across ranks every
batch norm is synchronised, so a run on W processes matches one process on the global batch.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from twist.data import ViewsDataset, collate_views
from twist.data.transforms import MultiView
from twist.distributed import synchronise_batch_norms
from twist.eval.features import extract_features
from twist.eval.linear import epoch_sampler
from twist.eval.session import EvalSession
from twist.eval.subsets import SubsetSource, class_balanced_subset, source_labels, subset_from_file
from twist.eval.supervised import classification_step, fit, normal_init_classifier, per_rank_batch, summarise


class Classifier(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Linear):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def select_subset(session: EvalSession, source) -> tuple[SubsetSource, str]:
    sem = session.cfg["semisup"]
    if sem["subset_file"]:
        return SubsetSource(source, subset_from_file(source, sem["subset_file"])), sem["subset_file"]
    indices = class_balanced_subset(source_labels(source), sem["fraction"], session.cfg["seed"])
    return SubsetSource(source, indices), f"class-balanced {sem['fraction']:g} (seed {session.cfg['seed']})"


def run_semisup(session: EvalSession) -> dict[str, Any]:
    cfg, env, device = session.cfg, session.env, session.device
    sem = cfg["semisup"]
    train_source, val_source = session.train_and_val_sources()
    subset, subset_desc = select_subset(session, train_source)
    labels = source_labels(subset)
    num_classes = max(len(getattr(train_source, "classes", [])), int(labels.max()) + 1)
    train_view, _ = session.transforms()

    extractor = session.feature_extractor(probe_feature=False)
    torch.manual_seed(cfg["seed"])
    model = Classifier(extractor, normal_init_classifier(extractor.feature_dim, num_classes)).to(device)
    if env.enabled:
        synchronise_batch_norms(model, env.world_size, device.type)
    trained = DistributedDataParallel(model) if env.enabled else model
    optimizer = torch.optim.SGD(
        [{"params": list(model.features.parameters()), "lr": sem["lr_backbone"]},
         {"params": list(model.head.parameters()), "lr": sem["lr_head"]}],
        lr=sem["lr_head"], momentum=sem["momentum"], weight_decay=sem["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=session.autocast_dtype == torch.float16)
    batch = per_rank_batch(session, "semisup.batch_size", sem["batch_size"])
    sampler = epoch_sampler(session, len(subset), batch, "semisup.batch_size")
    workers = cfg["data"]["num_workers"]
    loader = DataLoader(ViewsDataset(subset, MultiView([train_view]), cfg["seed"]), batch_size=batch,
                        sampler=sampler, num_workers=workers, drop_last=True, collate_fn=collate_views,
                        pin_memory=cfg["data"]["pin_memory"] and device.type == "cuda", persistent_workers=workers > 0)
    val_dataset = session.eval_dataset(val_source)

    def train_epoch(epoch: int) -> torch.Tensor:
        model.train()
        sampler.set_epoch(epoch)
        losses = [classification_step(trained, optimizer, views[0].to(device, non_blocking=True), targets.to(device),
                                      session.autocast_dtype, scaler)
                  for views, targets, _, _ in loader]
        return torch.stack(losses).mean()

    def evaluate() -> tuple[float, float]:
        logits, targets = extract_features(model, val_dataset, cfg["features"]["batch_size"], workers, device, env,
                                           session.autocast_dtype, progress=False)
        ranked = logits.topk(min(5, num_classes), dim=1).indices
        return (float((ranked[:, 0] == targets).float().mean()),
                float((ranked == targets[:, None]).any(dim=1).float().mean()))

    history = fit(session, model, optimizer, sem["epochs"], sem["eval_every"], train_epoch, evaluate,
                  desc="semisup")
    per_class = Counter(int(x) for x in labels)
    results = {**session.describe(), "subset": subset_desc, "subset_size": len(subset),
               "subset_per_class": {str(k): per_class[k] for k in sorted(per_class)},
               "num_classes": num_classes, "num_train": len(train_source), "num_val": len(val_source),
               **summarise(history)}
    session.write_json("results.json", results)
    return results
