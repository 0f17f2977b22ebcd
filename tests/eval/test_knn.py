"""Weighted kNN against a float64 brute force written here from the definition."""
import numpy as np
import pytest
import torch

from twist.eval.knn import knn_class_scores, knn_correct


def brute_force_knn(train, train_labels, queries, query_labels, num_classes, k, temperature):
    """Per query: cosine similarity to every training sample, the k largest, votes exp(s/T) per class."""
    train = np.asarray(train, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    top1 = top5 = 0
    all_scores = []
    for q, label in zip(queries, query_labels):
        sims = [(float(np.dot(q, t)), int(c)) for t, c in zip(train, train_labels)]
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for sim, cls in sims[:k]:
            scores[cls] += np.exp(sim / temperature)
        all_scores.append(scores)
        better = sum(1 for s in scores if s > scores[label])
        if scores[label] > 0:
            top1 += better < 1
            top5 += better < 5
    return top1, top5, np.array(all_scores)


@pytest.mark.parametrize("seed, k, temperature, num_classes", [(0, 20, 0.07, 10), (1, 5, 0.5, 7), (2, 1, 0.07, 4),
                                                               (3, 200, 0.1, 12)])
def test_knn_matches_float64_brute_force(seed, k, temperature, num_classes):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, 16))
    train_labels = rng.integers(0, num_classes, size=150)
    query_labels = rng.integers(0, num_classes, size=40)
    train = centres[train_labels] + rng.normal(scale=1.2, size=(150, 16))
    queries = centres[query_labels] + rng.normal(scale=1.2, size=(40, 16))

    expected1, expected5, expected_scores = brute_force_knn(train, train_labels, queries, query_labels,
                                                            num_classes, k, temperature)
    t = lambda a, dtype=torch.float32: torch.tensor(a, dtype=dtype)  # noqa: E731
    scores = knn_class_scores(t(train), t(train_labels, torch.long), t(queries), num_classes, k, temperature)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-4)
    got = knn_correct(t(train), t(train_labels, torch.long), t(queries), t(query_labels, torch.long), num_classes,
                      k, temperature, query_batch_size=7)  # batches that do not divide the queries
    assert got == (expected1, expected5)
    assert 0 < expected1 < 40  # the data is neither trivial nor hopeless


def test_a_query_whose_class_got_no_vote_is_wrong_even_at_top5():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[1.0, 0.05]])
    # Class 2 exists but no neighbour has it: fewer than five classes outscore it, yet it got no vote.
    assert knn_correct(train, labels, query, torch.tensor([2]), num_classes=3, k=2, temperature=0.1) == (0, 0)
