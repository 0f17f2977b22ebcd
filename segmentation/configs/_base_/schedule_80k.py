# mmseg's 80k-iteration schedule: schedule_20k.py's optimiser and poly decay (to 1e-4) run over
# 80k iterations, with validation and a checkpoint every 8k iterations and at the end.
_base_ = ["./schedule_20k.py"]
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False)]
train_cfg = dict(max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
