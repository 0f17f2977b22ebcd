# The miniature config with the backbone frozen: its weights and its batch-norm statistics stay the
# pretrained ones (frozen_stages=4 covers the stem and all four stages), and only the FPN neck and the
# head train. It scores what the features hold, apart from what fine-tuning does to them.
_base_ = ["./fpn_r18_digit_scenes-64x64.py"]
model = dict(backbone=dict(frozen_stages=4, norm_eval=True))
