"""Clustering metrics against scikit-learn and a brute-force best matching."""
import itertools

import numpy as np
import pytest
from sklearn import metrics as skm

from twist.eval.metrics import (
    cluster_metrics,
    cluster_to_class,
    contingency,
    hungarian_accuracy,
    hungarian_matching,
    majority_accuracy,
    mapped_topk_accuracy,
)


def brute_force_accuracy(labels, preds):
    """Max over every one-to-one map of cluster ids to class ids (extra clusters map to no class)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    num_clusters, num_classes = preds.max() + 1, labels.max() + 1
    n = max(num_clusters, num_classes)
    best = 0
    for perm in itertools.permutations(range(n)):
        # Cluster c is read as class perm[c]; perm[c] >= num_classes means "no class": always wrong.
        correct = sum(int(np.sum((preds == c) & (labels == perm[c]))) for c in range(num_clusters))
        best = max(best, correct)
    return best / len(labels)


def _random_labelings(seed, n=40):
    rng = np.random.default_rng(seed)
    k_true, k_pred = rng.integers(2, 7), rng.integers(2, 7)  # k <= 6 each
    labels = rng.integers(0, k_true, size=n)
    # Partly informative predictions: a random relabelling of the truth with some noise.
    mapping = rng.integers(0, k_pred, size=k_true)
    preds = np.where(rng.random(n) < 0.6, mapping[labels], rng.integers(0, k_pred, size=n))
    return labels, preds


@pytest.mark.parametrize("seed", range(12))
def test_scores_match_sklearn_and_brute_force(seed):
    labels, preds = _random_labelings(seed)
    m = cluster_metrics(labels, preds)
    assert m["nmi"] == pytest.approx(skm.normalized_mutual_info_score(labels, preds), abs=1e-12)
    assert m["ami"] == pytest.approx(skm.adjusted_mutual_info_score(labels, preds), abs=1e-12)
    assert m["ari"] == pytest.approx(skm.adjusted_rand_score(labels, preds), abs=1e-12)
    expected = brute_force_accuracy(labels, preds)
    assert m["acc"] == pytest.approx(expected, abs=1e-12)
    assert hungarian_accuracy(labels, preds) == pytest.approx(expected, abs=1e-12)
    assert all(isinstance(v, float) for v in m.values())


def test_perfect_clustering_with_permuted_ids_scores_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=60)
    perm = np.array([3, 0, 4, 1, 2])
    m = cluster_metrics(labels, perm[labels])
    assert m == pytest.approx({"nmi": 1.0, "ami": 1.0, "ari": 1.0, "acc": 1.0})


def test_more_clusters_than_classes_counts_unmatched_clusters_wrong():
    # Two classes split into four pure clusters: only two clusters can be matched one-to-one, so the
    # samples of the other two are wrong, even though every cluster is pure (the strict ACC).
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    preds = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
    assert hungarian_accuracy(labels, preds) == pytest.approx((4 + 3) / 10)
    assert hungarian_accuracy(labels, preds) == pytest.approx(brute_force_accuracy(labels, preds))


def test_fewer_clusters_than_classes():
    labels = np.array([0, 1, 2, 2, 2, 1])
    preds = np.zeros(6, dtype=int)  # everything in one cluster: it matches the largest class
    assert hungarian_accuracy(labels, preds) == pytest.approx(3 / 6)


def test_accepts_lists_and_sparse_ids():
    labels = [0, 0, 7, 7]
    preds = [9, 9, 2, 2]
    assert hungarian_accuracy(labels, preds) == 1.0
    assert cluster_metrics(labels, preds)["acc"] == 1.0


def test_contingency_counts():
    labels = np.array([0, 1, 1, 2, 2, 2])
    preds = np.array([1, 1, 0, 0, 0, 1])
    expected = np.zeros((2, 3), dtype=int)
    for p, t in zip(preds, labels):
        expected[p, t] += 1
    np.testing.assert_array_equal(contingency(labels, preds), expected)


@pytest.mark.parametrize("labels, preds", [
    (np.zeros(5, dtype=int), np.zeros(4, dtype=int)),
    (np.zeros(1, dtype=int), np.zeros(3, dtype=int)),      # would broadcast silently
    (np.zeros((2, 3), dtype=int), np.zeros((2, 3), dtype=int)),
])
def test_shape_mismatch_raises(labels, preds):
    with pytest.raises(ValueError, match="must be 1-D and equally long"):
        cluster_metrics(labels, preds)
    with pytest.raises(ValueError, match="must be 1-D and equally long"):
        hungarian_accuracy(labels, preds)


# ---- many-to-one reading, the map used for names, and top-k ----------------------------------------

def brute_force_majority_accuracy(labels, preds):
    """Every cluster read as the class that is right for most of its samples: a per-cluster maximum."""
    correct = 0
    for cluster in set(preds.tolist()):
        members = labels[preds == cluster]
        correct += max(int((members == c).sum()) for c in set(labels.tolist()))
    return correct / len(labels)


@pytest.mark.parametrize("seed", range(8))
def test_majority_accuracy_against_brute_force_and_bounds(seed):
    labels, preds = _random_labelings(seed)
    assert majority_accuracy(labels, preds) == pytest.approx(brute_force_majority_accuracy(labels, preds))
    # Many-to-one can only do as well or better than the best one-to-one reading.
    assert majority_accuracy(labels, preds) >= hungarian_accuracy(labels, preds) - 1e-12


def test_more_clusters_than_classes_majority_reads_every_pure_cluster_right():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    preds = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
    assert majority_accuracy(labels, preds) == 1.0
    mapping = cluster_to_class(labels, preds)
    assert mapping == {0: 0, 1: 0, 2: 1, 3: 1}
    assert set(hungarian_matching(labels, preds).items()) == {(0, 0), (2, 1)}


def test_mapped_topk_accuracy_counts_a_hit_anywhere_in_the_top_k():
    labels = np.array([0, 1, 2, 2])
    top = np.array([[5, 1, 0], [1, 5, 2], [5, 2, 1], [7, 7, 7]])
    mapping = {5: 0, 1: 1, 2: 2}  # cluster 7 has no class
    assert mapped_topk_accuracy(labels, top, mapping) == pytest.approx(3 / 4)
    assert mapped_topk_accuracy(labels, top[:, :1], mapping) == pytest.approx(2 / 4)
