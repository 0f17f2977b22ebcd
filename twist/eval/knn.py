"""Weighted k-nearest-neighbour classification on L2-normalised features.

Each query votes for the classes of its k most cosine-similar training samples, each vote weighted
by ``exp(similarity / temperature)``. A query is right at top-r when its class got a vote and fewer
than r classes got a larger one (an exact tie, which continuous features make improbable, counts
for the query).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from twist.eval.features import collective_device, extract_features
from twist.eval.linear import num_classes_of
from twist.eval.session import EvalSession


@torch.no_grad()
def knn_class_scores(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                     num_classes: int, k: int, temperature: float) -> torch.Tensor:
    """Summed vote per class for each query, shape ``(queries, num_classes)``."""
    train_features = F.normalize(train_features, dim=1)
    queries = F.normalize(queries.to(train_features.dtype), dim=1)
    k = min(k, train_features.shape[0])
    similarity = queries @ train_features.T
    top_sim, top_index = similarity.topk(k, dim=1)
    weights = (top_sim / temperature).exp()
    scores = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, train_labels.to(weights.device)[top_index], weights)


@torch.no_grad()
def knn_correct(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                query_labels: torch.Tensor, num_classes: int, k: int, temperature: float,
                query_batch_size: int = 1024) -> tuple[int, int]:
    """Number of queries whose label is the top-1, and among the top-5, classes of the vote."""
    top1 = top5 = 0
    query_labels = query_labels.to(train_features.device)
    for start in range(0, queries.shape[0], query_batch_size):
        scores = knn_class_scores(train_features, train_labels, queries[start:start + query_batch_size].to(
            train_features.device), num_classes, k, temperature)
        own = scores.gather(1, query_labels[start:start + query_batch_size, None])
        higher = (scores > own).sum(dim=1)
        voted = own[:, 0] > 0
        top1 += int((voted & (higher < 1)).sum())
        top5 += int((voted & (higher < 5)).sum())
    return top1, top5


def run_knn(session: EvalSession) -> dict:
    """The kNN protocol: features of both splits once, then every val image classified by its
    neighbours in the train split. Each rank classifies a share of the queries."""
    cfg, env, device = session.cfg, session.env, session.device
    knn = cfg["knn"]
    train_source, val_source = session.train_and_val_sources()
    extractor = session.feature_extractor()
    extract = dict(batch_size=cfg["features"]["batch_size"], num_workers=cfg["data"]["num_workers"], device=device,
                   env=env, autocast_dtype=session.autocast_dtype, progress=cfg["progress_bar"])
    train_feats, train_labels = extract_features(extractor, session.eval_dataset(train_source),
                                                 desc="train features", **extract)
    val_feats, val_labels = extract_features(extractor, session.eval_dataset(val_source), desc="val features",
                                             **extract)
    num_classes = num_classes_of(train_source, train_labels)
    mine = slice(env.rank, None, env.world_size)
    top1, top5 = knn_correct(train_feats.to(device), train_labels.to(device), val_feats[mine], val_labels[mine],
                             num_classes, knn["k"], knn["temperature"], knn["query_batch_size"])
    counts = torch.tensor([top1, top5], dtype=torch.long)
    if env.enabled:
        counts = counts.to(collective_device())
        dist.all_reduce(counts)
        counts = counts.cpu()
    results = {**session.describe(), "top1": int(counts[0]) / len(val_feats), "top5": int(counts[1]) / len(val_feats),
               "k": knn["k"], "temperature": knn["temperature"], "feature_dim": extractor.feature_dim,
               "num_classes": num_classes, "num_train": len(train_source), "num_val": len(val_source)}
    if knn["pixel_baseline"]:
        results["baseline"] = pixel_knn(session.eval_dataset(train_source), session.eval_dataset(val_source),
                                        num_classes, knn)
    session.write_json("results.json", results)
    return results


def pixel_knn(train_set, val_set, num_classes: int, knn: dict) -> dict:
    """The same vote on the evaluation view's raw pixels, flattened: what the features must beat.
    Each rank computes it whole (it is meant for small datasets)."""
    def pixels(dataset):
        images, labels = zip(*(dataset[i][:2] for i in range(len(dataset))))
        return torch.stack(images).flatten(1).double(), torch.as_tensor(labels)

    train_pixels, train_labels = pixels(train_set)
    val_pixels, val_labels = pixels(val_set)
    top1, top5 = knn_correct(train_pixels, train_labels, val_pixels, val_labels, num_classes, knn["k"],
                             knn["temperature"], knn["query_batch_size"])
    return {"method": "kNN on raw pixels", "top1": top1 / len(val_set), "top5": top5 / len(val_set),
            "feature_dim": int(train_pixels.shape[1])}
