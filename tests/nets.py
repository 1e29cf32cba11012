"""Small user-style networks for the tests: a VGG-like chain and a ResNet-like graph."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class VGGish(nn.Module):
    """VGG-style: 3x3 convs, 2x2 max pools, no normalization; a dilated and a grouped conv."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 16, 3, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(16, 16, 3, padding=1),
                relu2=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv3=nn.Conv2d(16, 32, 3, padding=2, dilation=2),
                relu3=nn.ReLU(),
                pool2=nn.MaxPool2d(3, stride=2, padding=1),
                conv4=nn.Conv2d(32, 32, 3, padding=1, groups=4),
                relu4=nn.ReLU(),
                conv5=nn.Conv2d(32, 24, 3, stride=2),
                relu5=nn.ReLU(),
                pool5=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(fc6=nn.Linear(24 * 3 * 3, 64), relu6=nn.ReLU(), fc7=nn.Linear(64, classes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class Block(nn.Module):
    """A ResNet basic block: one ReLU module used twice, in place, and a residual addition."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetish(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Block(16, 16, 1), Block(16, 16, 1))
        self.layer2 = nn.Sequential(Block(16, 32, 2), Block(32, 32, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.stem(x))))  # a functional ReLU, which hooks miss
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so that the norm policy matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


class Tiny(nn.Module):
    """Two small convolutions and a linear head: fast enough for many forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5, stride=2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(h).flatten(1))

    # Direct computations of two layers' outputs, for tests that check captured features.
    def low(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu1(self.conv1(x))

    def high(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu2(self.conv2(self.low(x))))
