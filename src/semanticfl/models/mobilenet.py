"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018)
in the CIFAR variant used for small images.

The body follows the paper's Table 2: a 3x3 conv stem with 32 channels, seven stages of inverted
residual bottlenecks (expansion factor t, output channels c, n repeats, first stride s), a 1x1 conv
to 1280 channels, global average pooling and a linear classifier. Each bottleneck is a 1x1
expansion conv (t x channels), a 3x3 depthwise conv, and a 1x1 *linear* projection (no
nonlinearity after it); ReLU6 after the first two, BatchNorm after all three, and an identity
shortcut when stride is 1 and the channels are unchanged.

CIFAR variant: the stem and the first stride-2 stage (24 channels) run at stride 1, so the body
downsamples 8x instead of 32x and a 32x32 input ends at 4x4 (not 1x1). Following the paper, the
width multiplier scales every layer but the last conv, which keeps at least 1280 channels; scaled
widths are rounded to multiples of 8 (all widths at 1.0 already are). BatchNorm running statistics
are buffers in the state_dict, averaged by FedAvg like those of the ResNets.
"""

from torch import Tensor, nn

from semanticfl.models.base import ClientModel
from semanticfl.models.resnet import init_weights

STEM_WIDTH = 32
LAST_WIDTH = 1280
EXPANSION = 6
# (expansion t, output channels c, repeats n, first stride s); Table 2 of the paper with the
# 24-channel stage's stride reduced from 2 to 1 for 32x32 inputs.
STAGES = (
    (1, 16, 1, 1),
    (EXPANSION, 24, 2, 1),
    (EXPANSION, 32, 3, 2),
    (EXPANSION, 64, 4, 2),
    (EXPANSION, 96, 3, 1),
    (EXPANSION, 160, 3, 2),
    (EXPANSION, 320, 1, 1),
)
CHANNEL_MULTIPLE = 8


def scaled_width(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to the nearest multiple of 8 (at least 8)."""
    return max(CHANNEL_MULTIPLE, round(channels * width_mult / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE)


def conv_bn(
    in_planes: int, out_planes: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """A bias-free conv ('same' padding) followed by BatchNorm."""
    conv = nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_planes)]


class InvertedResidual(nn.Module):
    """1x1 expand (t x) - ReLU6 - 3x3 depthwise (stride s) - ReLU6 - 1x1 linear projection.

    The expansion conv is left out when t = 1 (the paper's first bottleneck). The input is added
    to the output when the block keeps both resolution and width.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_planes * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*conv_bn(in_planes, hidden, 1), nn.ReLU6()]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += conv_bn(hidden, out_planes, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_planes == out_planes

    def forward(self, x: Tensor) -> Tensor:
        """``x + block(x)`` with the shortcut, else ``block(x)``."""
        out = self.block(x)
        return x + out if self.residual else out


def make_body(in_channels: int, width_mult: float) -> tuple[nn.Sequential, int]:
    """Stem, bottleneck stages and the last 1x1 conv; returns the body and its output width."""
    in_planes = scaled_width(STEM_WIDTH, width_mult)
    layers: list[nn.Module] = [*conv_bn(in_channels, in_planes, 3), nn.ReLU6()]
    for expansion, channels, repeats, stride in STAGES:
        out_planes = scaled_width(channels, width_mult)
        for index in range(repeats):
            layers.append(InvertedResidual(in_planes, out_planes, stride if index == 0 else 1, expansion))
            in_planes = out_planes
    last = scaled_width(LAST_WIDTH, max(1.0, width_mult))
    layers += [*conv_bn(in_planes, last, 1), nn.ReLU6()]
    return nn.Sequential(*layers), last


class MobileNetV2(ClientModel):
    """CIFAR-style MobileNetV2: the body, global average pool, linear head.

    Features are the pooled output of the last 1x1 conv (1280-d for ``width_mult`` <= 1).
    """

    def __init__(self, num_classes: int, in_channels: int, width_mult: float = 1.0):
        super().__init__()
        self.body, self.feature_dim = make_body(in_channels, width_mult)
        self.num_classes = num_classes
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.apply(init_weights)

    def features(self, x: Tensor) -> Tensor:
        """Return the globally pooled activations of the last 1x1 conv."""
        return self.pool(self.body(x))
