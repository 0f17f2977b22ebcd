"""MMSegmentation transfer: FCN-FPN configs, the training entry point, dataset checks and a synthetic
VOC/Cityscapes writer. Installed as ``twist_segmentation``; mmseg is imported only by ``train``."""
