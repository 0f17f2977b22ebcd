from twist.losses.twist import TwistLoss, sparse_pairs

__all__ = ["TwistLoss", "sparse_pairs"]
