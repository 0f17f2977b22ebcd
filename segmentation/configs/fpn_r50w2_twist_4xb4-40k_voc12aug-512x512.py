# The SwAV-style ResNet-50w2 (every width doubled, the stem's too) variant of
# fpn_r50_twist_4xb4-40k_voc12aug-512x512.py:
# the widths twist-convert prints for a 50w2 checkpoint, and an FPN reading the doubled stages.
_base_ = ["fpn_r50_twist_4xb4-40k_voc12aug-512x512.py"]
model = dict(backbone=dict(stem_channels=128, base_channels=128),
             neck=dict(in_channels=[512, 1024, 2048, 4096]))
