# The miniature config with the backbone fine-tuned at a tenth of the rate of the FPN neck and head
# (SGD 0.001 against 0.01, the same poly decay). In 1,000 iterations the VOC config's full rate moves
# the small pretrained networks far from their weights; a tenth of it keeps what they hold while the
# randomly initialised neck and head train at the VOC rate (docs/transfer_notes.md, section 3).
_base_ = ["./fpn_r18_digit_scenes-64x64.py"]
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=0.1)}))
