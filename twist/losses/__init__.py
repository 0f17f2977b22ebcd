from twist.losses.barlow_twins import BarlowTwinsLoss
from twist.losses.self_label import SelfLabelLoss
from twist.losses.twist import TwistLoss, sparse_pairs, teacher_student_pairs
from twist.losses.wmse import WhiteningError, WMSELoss, cholesky_whiten

__all__ = ["BarlowTwinsLoss", "SelfLabelLoss", "TwistLoss", "WMSELoss", "WhiteningError", "cholesky_whiten",
           "sparse_pairs", "teacher_student_pairs"]
