"""Unsupervised-classification metrics: NMI, AMI, ARI, and accuracy under the best cluster-to-class matching."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm


def contingency(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """counts[p, t] = number of samples predicted p with true class t, built with one bincount."""
    num_pred, num_true = int(preds.max()) + 1, int(labels.max()) + 1
    flat = np.bincount(preds.astype(np.int64) * num_true + labels.astype(np.int64), minlength=num_pred * num_true)
    return flat.reshape(num_pred, num_true)


def _label_arrays(labels, preds) -> tuple[np.ndarray, np.ndarray]:
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-D and equally long; got {labels.shape} and {preds.shape}")
    return labels, preds


def hungarian_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Accuracy after the one-to-one matching of clusters to classes that maximises it.

    With more clusters than classes the unmatched clusters count as wrong, so the figure is the
    strict one-to-one ACC of the papers.
    """
    labels, preds = _label_arrays(labels, preds)  # else a length-1 side broadcasts to an accuracy above 1
    counts = contingency(labels, preds)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def hungarian_matching(labels, preds) -> dict[int, int]:
    """The one-to-one map of cluster ids to class ids that maximises the number of agreements."""
    labels, preds = _label_arrays(labels, preds)
    counts = contingency(labels, preds)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols)}


def majority_mapping(labels, preds) -> dict[int, int]:
    """Each cluster id to the class most of its samples have (several clusters may share a class)."""
    labels, preds = _label_arrays(labels, preds)
    counts = contingency(labels, preds)
    used = np.flatnonzero(counts.sum(axis=1))
    return {int(p): int(counts[p].argmax()) for p in used}


def cluster_to_class(labels, preds) -> dict[int, int]:
    """Every used cluster id to a class: the Hungarian match, and for clusters left unmatched (more
    clusters than classes) their majority class. This is the map used to name predicted classes."""
    mapping = majority_mapping(labels, preds)
    mapping.update({p: c for p, c in hungarian_matching(labels, preds).items() if p in mapping})
    return mapping


def majority_accuracy(labels, preds) -> float:
    """Accuracy when every cluster is read as its majority class (many-to-one).

    With as many clusters as classes it is at least the Hungarian ACC; with more clusters it rises
    towards 1 as clusters get purer, so it is reported beside, never instead of, the strict ACC.
    """
    labels, preds = _label_arrays(labels, preds)
    counts = contingency(labels, preds)
    return float(counts.max(axis=1).sum() / len(labels))


def mapped_topk_accuracy(labels, topk_preds: np.ndarray, mapping: dict[int, int]) -> float:
    """Fraction of samples whose class is among their top-k clusters read through ``mapping``;
    clusters absent from ``mapping`` count as no class."""
    labels = np.asarray(labels)
    topk_preds = np.asarray(topk_preds)
    if topk_preds.ndim != 2 or topk_preds.shape[0] != labels.shape[0]:
        raise ValueError(f"top-k predictions must be (samples, k); got {topk_preds.shape} for {labels.shape[0]} labels")
    lookup = np.full(int(topk_preds.max()) + 1, -1, dtype=np.int64)
    for cluster, cls in mapping.items():
        if cluster < len(lookup):
            lookup[cluster] = cls
    return float((lookup[topk_preds] == labels[:, None]).any(axis=1).mean())


def cluster_metrics(labels, preds) -> dict[str, float]:
    labels, preds = _label_arrays(labels, preds)
    return {
        "nmi": float(skm.normalized_mutual_info_score(labels, preds)),
        "ami": float(skm.adjusted_mutual_info_score(labels, preds)),
        "ari": float(skm.adjusted_rand_score(labels, preds)),
        "acc": hungarian_accuracy(labels, preds),
    }
