"""Model definitions (ZFNet, AlexNet), the embedded pretrained default, and loading."""

from convscope.models.alexnet import AlexNet, alexnet
from convscope.models.efficientnet import efficientnet_lite0
from convscope.models.info import ModelInfo, Preprocess, imagenet_class_names, info_of
from convscope.models.loading import BUILTINS, load, load_weights, read_state_dict
from convscope.models.zfnet import ZFNet, zfnet

__all__ = [
    "BUILTINS",
    "AlexNet",
    "ModelInfo",
    "Preprocess",
    "ZFNet",
    "alexnet",
    "efficientnet_lite0",
    "imagenet_class_names",
    "info_of",
    "load",
    "load_weights",
    "read_state_dict",
    "zfnet",
]
