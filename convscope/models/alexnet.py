"""AlexNet as Zeiler & Fergus compare it: Krizhevsky's single-tower network.

96 11x11 stride-4 filters in conv1, local response normalization before overlapping 3x3/2
pooling, and dense (not two-GPU sparse) connections in conv3-5. Sizes for a 224 input:
conv1 55, pool1 27, conv2 27, pool2 13, conv3-5 13, pool5 6.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from convscope.models.info import PAPER, ModelInfo
from convscope.models.zfnet import _lrn, classifier, paper_aliases, paper_init


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),
                relu1=nn.ReLU(inplace=True),
                norm1=_lrn(),
                pool1=nn.MaxPool2d(3, stride=2),
                conv2=nn.Conv2d(96, 256, kernel_size=5, padding=2),
                relu2=nn.ReLU(inplace=True),
                norm2=_lrn(),
                pool2=nn.MaxPool2d(3, stride=2),
                conv3=nn.Conv2d(256, 384, kernel_size=3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 384, kernel_size=3, padding=1),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(384, 256, kernel_size=3, padding=1),
                relu5=nn.ReLU(inplace=True),
                pool5=nn.MaxPool2d(3, stride=2),
            )
        )
        self.classifier = classifier(256 * 6 * 6, num_classes, dropout=dropout)
        paper_init(self)
        self.convscope_info = ModelInfo("alexnet", PAPER, paper_aliases(self.features))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(x.flatten(1))


def alexnet(num_classes: int = 1000, dropout: float = 0.5) -> AlexNet:
    return AlexNet(num_classes=num_classes, dropout=dropout)
