from twist.losses.self_label import SelfLabelLoss
from twist.losses.twist import TwistLoss, sparse_pairs, teacher_student_pairs

__all__ = ["SelfLabelLoss", "TwistLoss", "sparse_pairs", "teacher_student_pairs"]
