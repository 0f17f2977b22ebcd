# TWIST ResNet-50, semantic FPN on Pascal VOC 2012 + aug, 512x512, 40k iterations, 4 GPUs x 4 images.
# The paper (Table 6) reports VOC mIoU 73.3 (mean of 5 trials) without giving its schedule: the 40k
# schedule, the crop and the batch are our choice (20k is the length DenseCL and MMSelfSup use for VOC).
_base_ = ["_base_/fpn_r50_twist.py", "_base_/voc12aug_512x512.py", "_base_/default_runtime.py",
          "_base_/schedule_40k.py"]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(num_classes=21))
