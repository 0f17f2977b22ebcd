"""Detectron2 transfer: configs, the training entry point and a synthetic VOC/COCO writer.

Installed as ``twist_detection``. Only ``train_net`` imports detectron2 (installed from its own guide).
"""
