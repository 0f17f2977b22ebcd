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


def cluster_metrics(labels, preds) -> dict[str, float]:
    labels, preds = _label_arrays(labels, preds)
    return {
        "nmi": float(skm.normalized_mutual_info_score(labels, preds)),
        "ami": float(skm.adjusted_mutual_info_score(labels, preds)),
        "ari": float(skm.adjusted_rand_score(labels, preds)),
        "acc": hungarian_accuracy(labels, preds),
    }
