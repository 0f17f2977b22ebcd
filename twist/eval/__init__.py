"""Evaluation protocols: linear probe, kNN, semi-supervised fine-tuning, unsupervised classification."""
from __future__ import annotations

from typing import Any, Callable


def protocol_runner(name: str) -> Callable[[Any], dict[str, Any]]:
    """The function that runs protocol ``name`` on an open :class:`twist.eval.session.EvalSession`."""
    if name == "linear":
        from twist.eval.linear import run_linear
        return run_linear
    if name == "knn":
        from twist.eval.knn import run_knn
        return run_knn
    if name == "semisup":
        from twist.eval.semisup import run_semisup
        return run_semisup
    if name == "cluster":
        from twist.eval.cluster import run_cluster
        return run_cluster
    raise ValueError(f"unknown evaluation protocol '{name}'; expected linear, knn, semisup or cluster")
