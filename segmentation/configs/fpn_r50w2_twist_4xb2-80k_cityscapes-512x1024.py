# The SwAV-style ResNet-50w2 (every width doubled, the stem's too) variant of
# fpn_r50_twist_4xb2-80k_cityscapes-512x1024.py:
# the widths twist-convert prints for a 50w2 checkpoint, and an FPN reading the doubled stages.
_base_ = ["fpn_r50_twist_4xb2-80k_cityscapes-512x1024.py"]
model = dict(backbone=dict(stem_channels=128, base_channels=128),
             neck=dict(in_channels=[512, 1024, 2048, 4096]))
