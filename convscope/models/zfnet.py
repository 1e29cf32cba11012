"""ZFNet: the network of Zeiler & Fergus's Fig. 3, as a plain module.

Feature-map sizes for a 224x224 input: conv1 110, pool1 55, conv2 26, pool2 13, conv3-5 13,
pool5 6 (9216 inputs to fc6). The paper does not give the padding; conv1 pad 1, conv2 pad 0,
conv3-5 pad 1 with ceil-mode 3x3/2 pooling gives exactly its sizes. Contrast normalization
comes after pooling (pool, then normalize), the order the paper's figure shows.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from convscope.models.info import PAPER, ModelInfo


def _lrn() -> nn.LocalResponseNorm:
    # The paper gives no parameters; these are Krizhevsky's.
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


def paper_init(module: nn.Module) -> None:
    """The paper's initialization: weights N(0, 0.01^2), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def classifier(in_features: int, num_classes: int, width: int = 4096, dropout: float = 0.5):
    return nn.Sequential(
        OrderedDict(
            fc6=nn.Linear(in_features, width),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(dropout),
            fc7=nn.Linear(width, width),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(dropout),
            fc8=nn.Linear(width, num_classes),
        )
    )


def paper_aliases(features: nn.Sequential) -> dict[str, str]:
    """conv1..conv5, fc6, fc7 name the rectified outputs, as in the paper; poolN/normN/fc8 too."""
    aliases = {}
    for name in features._modules:
        if name.startswith("relu"):
            aliases["conv" + name[4:]] = f"features.{name}"
        elif name.startswith(("pool", "norm")):
            aliases[name] = f"features.{name}"
    aliases.update(fc6="classifier.relu6", fc7="classifier.relu7", fc8="classifier.fc8")
    aliases["logits"] = "classifier.fc8"
    return aliases


class ZFNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 96, kernel_size=7, stride=2, padding=1),
                relu1=nn.ReLU(inplace=True),
                pool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
                norm1=_lrn(),
                conv2=nn.Conv2d(96, 256, kernel_size=5, stride=2),
                relu2=nn.ReLU(inplace=True),
                pool2=nn.MaxPool2d(3, stride=2, ceil_mode=True),
                norm2=_lrn(),
                conv3=nn.Conv2d(256, 384, kernel_size=3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 384, kernel_size=3, padding=1),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(384, 256, kernel_size=3, padding=1),
                relu5=nn.ReLU(inplace=True),
                pool5=nn.MaxPool2d(3, stride=2, ceil_mode=True),
            )
        )
        self.classifier = classifier(256 * 6 * 6, num_classes, dropout=dropout)
        paper_init(self)
        self.convscope_info = ModelInfo("zfnet", PAPER, paper_aliases(self.features))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(x.flatten(1))


def zfnet(num_classes: int = 1000, dropout: float = 0.5) -> ZFNet:
    return ZFNet(num_classes=num_classes, dropout=dropout)
