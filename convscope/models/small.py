"""ZFNet and AlexNet scaled down for 32 px images (CIFAR-10), and the ablations of Table 3.

Both small nets keep the full-size nets' depth and layer order (five convolutions, three
max-poolings, two contrast normalizations, fc6/fc7 with dropout, fc8) and the contrast the paper
draws at layer 1: AlexNet's large filters with a large stride against ZFNet's smaller filters
with a smaller stride. Sizes for a 32x32 input:

| layer | zfnet-small | out | alexnet-small | out |
|---|---|---|---|---|
| conv1 | 3x3 stride 1 pad 1, 32 maps | 32 | 5x5 stride 2 pad 2, 32 maps | 16 |
| then | pool 3/2 (ceil), LRN | 16 | LRN, pool 3/2 (ceil) | 8 |
| conv2 | 3x3 stride 2 pad 1, 64 | 8 | 5x5 stride 1 pad 2, 64 | 8 |
| then | pool 3/2 (ceil), LRN | 4 | LRN, pool 3/2 (ceil) | 4 |
| conv3-5 | 3x3 pad 1, 96 / 96 / 64 | 4 | 3x3 pad 1, 96 / 96 / 64 | 4 |
| pool5 | 3/2 (ceil) | 2 | 3/2 (ceil) | 2 |
| fc6, fc7 | 256, 256, dropout 0.5 | | 256, 256, dropout 0.5 | |

`build_net` also builds the full-size designs with layers removed or resized (Table 3):
`drop` names layers to leave out (conv3, conv4, conv5, fc6, fc7), `fc_width` sets fc6/fc7's
width and `conv_widths` the number of maps of conv3-5 (three values) or conv1-5 (five).
Module names stay those of the full nets, so state dicts and layer aliases carry over.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.models.info import PAPER, ModelInfo, Preprocess
from convscope.models.zfnet import _lrn, paper_init

# The paper's input scale (raw pixel values minus the mean) at CIFAR's size: the training
# pipeline replaces the mean colour by the per-pixel mean of the training set.
SMALL = Preprocess(resize=36, crop=32, mean=PAPER.mean, std=(1.0, 1.0, 1.0))


@dataclass(frozen=True)
class ConvSpec:
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Design:
    """One network family: its conv geometry, widths, pooling and where LRN sits."""

    name: str
    convs: tuple[ConvSpec, ...]  # conv1..conv5
    widths: tuple[int, ...]  # conv1..conv5 maps
    fc_width: int
    norm_before_pool: bool  # AlexNet: LRN then pool; ZFNet: pool then LRN
    ceil_mode: bool
    input_size: int
    preprocess: Preprocess


DESIGNS: dict[str, Design] = {
    "zfnet": Design(
        "zfnet",
        (
            ConvSpec(7, 2, 1),
            ConvSpec(5, 2, 0),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
        ),
        (96, 256, 384, 384, 256),
        4096,
        norm_before_pool=False,
        ceil_mode=True,
        input_size=224,
        preprocess=PAPER,
    ),
    "alexnet": Design(
        "alexnet",
        (
            ConvSpec(11, 4, 2),
            ConvSpec(5, 1, 2),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
        ),
        (96, 256, 384, 384, 256),
        4096,
        norm_before_pool=True,
        ceil_mode=False,
        input_size=224,
        preprocess=PAPER,
    ),
    "zfnet-small": Design(
        "zfnet-small",
        (
            ConvSpec(3, 1, 1),
            ConvSpec(3, 2, 1),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
        ),
        (32, 64, 96, 96, 64),
        256,
        norm_before_pool=False,
        ceil_mode=True,
        input_size=32,
        preprocess=SMALL,
    ),
    "alexnet-small": Design(
        "alexnet-small",
        (
            ConvSpec(5, 2, 2),
            ConvSpec(5, 1, 2),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
            ConvSpec(3, 1, 1),
        ),
        (32, 64, 96, 96, 64),
        256,
        norm_before_pool=True,
        ceil_mode=True,
        input_size=32,
        preprocess=SMALL,
    ),
}

DROPPABLE = ("conv3", "conv4", "conv5", "fc6", "fc7")


def check_ablation(
    arch: str,
    drop: Sequence[str] = (),
    conv_widths: Sequence[int] | None = None,
    fc_width: int | None = None,
) -> None:
    """Raise a ConvscopeError for an unknown design, a layer that cannot go, or a bad width."""
    if arch not in DESIGNS:
        raise ConvscopeError(f"unknown --arch {arch!r}: use one of {', '.join(DESIGNS)}")
    for name in drop:
        if name not in DROPPABLE:
            raise ConvscopeError(
                f"--drop {name!r} is not a layer that can be removed: use {', '.join(DROPPABLE)}"
            )
    if conv_widths is not None:
        if len(conv_widths) not in (3, 5) or any(w < 1 for w in conv_widths):
            raise ConvscopeError(
                f"--conv-widths takes 3 (conv3-5) or 5 (conv1-5) positive integers; "
                f"got {','.join(str(w) for w in conv_widths)}"
            )
    if fc_width is not None and fc_width < 1:
        raise ConvscopeError(f"--fc-width must be a positive integer; got {fc_width}")


def build_net(
    arch: str,
    num_classes: int = 10,
    *,
    drop: Sequence[str] = (),
    conv_widths: Sequence[int] | None = None,
    fc_width: int | None = None,
    dropout: float = 0.5,
) -> Net:
    """A network of the design `arch` with the Table 3 changes applied, paper-initialized."""
    check_ablation(arch, drop, conv_widths, fc_width)
    d = DESIGNS[arch]
    widths = list(d.widths)
    if conv_widths is not None:
        widths[5 - len(conv_widths) :] = list(conv_widths)
    fc = fc_width or d.fc_width
    return Net(d, num_classes, tuple(drop), tuple(widths), fc, dropout)


class Net(nn.Module):
    """`features` then `classifier`, named like the paper's ZFNet and AlexNet modules."""

    def __init__(
        self,
        design: Design,
        num_classes: int,
        drop: tuple[str, ...],
        widths: tuple[int, ...],
        fc_width: int,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        size = design.input_size

        def pool(name: str) -> None:
            nonlocal size
            layers[name] = nn.MaxPool2d(3, stride=2, ceil_mode=design.ceil_mode)
            num = size - 3
            size = (-(-num // 2) if design.ceil_mode else num // 2) + 1

        for i, (spec, width) in enumerate(zip(design.convs, widths), start=1):
            if f"conv{i}" in drop:
                continue
            layers[f"conv{i}"] = nn.Conv2d(
                channels, width, kernel_size=spec.kernel, stride=spec.stride, padding=spec.padding
            )
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
            channels = width
            if i in (1, 2):
                if design.norm_before_pool:
                    layers[f"norm{i}"] = _lrn()
                    pool(f"pool{i}")
                else:
                    pool(f"pool{i}")
                    layers[f"norm{i}"] = _lrn()
        pool("pool5")
        if size < 1:
            raise ConvscopeError(f"{design.name} leaves no spatial extent after pool5")
        self.features = nn.Sequential(layers)
        head: OrderedDict[str, nn.Module] = OrderedDict()
        inputs = channels * size * size
        for i in (6, 7):
            if f"fc{i}" in drop:
                continue
            head[f"fc{i}"] = nn.Linear(inputs, fc_width)
            head[f"relu{i}"] = nn.ReLU(inplace=True)
            head[f"drop{i}"] = nn.Dropout(dropout)
            inputs = fc_width
        head["fc8"] = nn.Linear(inputs, num_classes)
        self.classifier = nn.Sequential(head)
        paper_init(self)
        self.convscope_info = ModelInfo(design.name, design.preprocess, self._aliases())

    def _aliases(self) -> dict[str, str]:
        aliases = {}
        for name in self.features._modules:
            if name.startswith("relu"):
                aliases["conv" + name[4:]] = f"features.{name}"
            elif name.startswith(("pool", "norm")):
                aliases[name] = f"features.{name}"
        for name in self.classifier._modules:
            if name.startswith("relu"):
                aliases["fc" + name[4:]] = f"classifier.{name}"
        aliases["fc8"] = aliases["logits"] = "classifier.fc8"
        return aliases

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(x.flatten(1))


def zfnet_small(num_classes: int = 10, dropout: float = 0.5) -> Net:
    return build_net("zfnet-small", num_classes, dropout=dropout)


def alexnet_small(num_classes: int = 10, dropout: float = 0.5) -> Net:
    return build_net("alexnet-small", num_classes, dropout=dropout)
