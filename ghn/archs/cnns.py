"""Built-in CNNs in plain torch (no torchvision): ResNet, DenseNet, MobileNetV2 / V3-style with squeeze-excite.

Every model takes ``num_classes``, ``in_channels`` and ``image_size``, so one factory serves Fashion-MNIST, CIFAR
and ImageNet-size inputs.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn.archs.layers import SqueezeExcite, make_act
from ghn.archs.registry import register_model


# ================================================================================================================
# ResNet
# ================================================================================================================
def _small_input(small_input: Optional[bool], image_size: int) -> bool:
    return image_size <= 64 if small_input is None else bool(small_input)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) with a residual connection (ResNet-50+, stride on the 3x3)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with four stages of ``block`` (widths 64/128/256/512 x expansion).

    ``small_input=True`` uses a 3x3 stride-1 stem without max-pooling (28/32 px images); ``None`` picks it
    when ``image_size <= 64``.
    """

    def __init__(self, block: type, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, small_input: Optional[bool] = None, width: int = 64,
                 zero_init_residual: bool = False):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries, got {list(layers)}")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.small_input = _small_input(small_input, image_size)
        if self.small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = width
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.in_planes != out:
            downsample = nn.Sequential(nn.Conv2d(self.in_planes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        blocks: List[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = out
        for _ in range(1, n):
            blocks.append(block(out, planes))
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet")
def resnet18(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> ResNet:
    """ResNet-18 (11.7M params at 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, image_size, **kw)


@register_model()
def resnet34(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> ResNet:
    """ResNet-34 (21.8M params at 1000 classes)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, image_size, **kw)


@register_model()
def resnet50(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> ResNet:
    """ResNet-50 (25.6M params at 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, image_size, **kw)


# ================================================================================================================
# DenseNet
# ================================================================================================================
class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (bottleneck) -> BN-ReLU-Conv3x3 producing ``growth`` new channels."""

    def __init__(self, in_ch: int, growth: int, bn_size: int):
        super().__init__()
        mid = bn_size * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, dim=1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """``n`` dense layers; each sees the concatenation of the block input and all previous outputs."""

    def __init__(self, n: int, in_ch: int, growth: int, bn_size: int):
        super().__init__()
        self.layers = nn.ModuleList([DenseLayer(in_ch + i * growth, growth, bn_size) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (channel compression) followed by 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class DenseNet(nn.Module):
    """DenseNet-BC: stem, dense blocks joined by transitions (compression 0.5), BN-ReLU, global pool, linear."""

    def __init__(self, growth: int = 32, block_config: Sequence[int] = (6, 12, 24, 16), init_features: int = 64,
                 bn_size: int = 4, compression: float = 0.5, num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, small_input: Optional[bool] = None):
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.small_input = _small_input(small_input, image_size)
        if self.small_input:
            stem: List[nn.Module] = [nn.Conv2d(in_channels, init_features, 3, padding=1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, init_features, 7, stride=2, padding=3, bias=False),
                    nn.BatchNorm2d(init_features), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        self.stem = nn.Sequential(*stem)
        stages: List[nn.Module] = []
        ch = init_features
        for i, n in enumerate(block_config):
            stages.append(DenseBlock(n, ch, growth, bn_size))
            ch += n * growth
            if i != len(block_config) - 1:
                out = int(ch * compression)
                stages.append(Transition(ch, out))
                ch = out
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(ch)
        self.classifier = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.features(self.stem(x))))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("densenet")
def densenet121(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> DenseNet:
    """DenseNet-121 (growth 32, blocks 6/12/24/16; 8.0M params at 1000 classes)."""
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels,
                    image_size=image_size, **kw)


@register_model()
def densenet_tiny(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw: Any) -> DenseNet:
    """A small DenseNet (growth 12, blocks 4/4/4, 24 stem channels) for quick experiments."""
    return DenseNet(12, (4, 4, 4), 24, num_classes=num_classes, in_channels=in_channels,
                    image_size=image_size, **kw)


# ================================================================================================================
# MobileNet (inverted residuals, depthwise convs, squeeze-excite)
# ================================================================================================================
def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going below 90% of it."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> activation (or none)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: Optional[str] = "relu6"):
        layers: List[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups,
                                             bias=False), nn.BatchNorm2d(out_ch)]
        if act is not None:
            layers.append(make_act(act, inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (kxk, strided) -> [SE] -> project (1x1, linear); residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, expanded: int, kernel: int = 3, stride: int = 1,
                 se: bool = False, act: str = "relu6"):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: List[nn.Module] = []
        if expanded != in_ch:
            layers.append(ConvBNAct(in_ch, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(expanded, _make_divisible(expanded // 4, 8), "relu", "hardsigmoid"))
        layers.append(ConvBNAct(expanded, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


# (kernel, expanded_channels, out_channels, se, activation, stride) per block
BlockCfg = Tuple[int, int, int, bool, str, int]


def _v2_config(width_mult: float = 1.0) -> Tuple[int, List[BlockCfg]]:
    """MobileNetV2's (t, c, n, s) table expanded to one entry per block; returns (stem channels, blocks)."""
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]
    stem = _make_divisible(32 * width_mult)
    blocks: List[BlockCfg] = []
    ch = stem
    for t, c, n, s in table:
        out = _make_divisible(c * width_mult)
        for i in range(n):
            blocks.append((3, ch * t, out, False, "relu6", s if i == 0 else 1))
            ch = out
    return stem, blocks


def _v3_small_config() -> Tuple[int, List[BlockCfg]]:
    """MobileNetV3-small-like blocks (squeeze-excite, hardswish in the later stages)."""
    rows = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
            (5, 96, 40, True, "hardswish", 2), (5, 240, 40, True, "hardswish", 1),
            (5, 240, 40, True, "hardswish", 1), (5, 120, 48, True, "hardswish", 1),
            (5, 144, 48, True, "hardswish", 1), (5, 288, 96, True, "hardswish", 2),
            (5, 576, 96, True, "hardswish", 1), (5, 576, 96, True, "hardswish", 1)]
    return 16, list(rows)


class MobileNetV2(nn.Module):
    """MobileNet of inverted-residual blocks: stem conv, ``blocks``, 1x1 conv to ``last_channels``, head.

    ``blocks`` is a list of ``(kernel, expanded, out, se, activation, stride)``; the default is MobileNetV2.
    ``head_hidden`` > 0 adds a Linear-hardswish hidden layer before the classifier (MobileNetV3 style).
    ``small_input`` (default: ``image_size <= 64``) makes the stem and the first strided block stride 1.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 width_mult: float = 1.0, blocks: Optional[Sequence[BlockCfg]] = None,
                 stem_channels: Optional[int] = None, last_channels: Optional[int] = None,
                 stem_act: str = "relu6", last_act: str = "relu6", head_hidden: int = 0, dropout: float = 0.2,
                 small_input: Optional[bool] = None):
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.small_input = _small_input(small_input, image_size)
        if blocks is None:
            stem_default, blocks = _v2_config(width_mult)
            stem_channels = stem_channels or stem_default
            last_channels = last_channels or _make_divisible(1280 * max(1.0, width_mult))
        if stem_channels is None or last_channels is None:
            raise ValueError("stem_channels and last_channels are required with custom blocks")
        blocks = list(blocks)
        if self.small_input:  # keep more resolution on 28/32 px inputs
            for i, b in enumerate(blocks):
                if b[5] == 2:
                    blocks[i] = b[:5] + (1,)
                    break
        layers: List[nn.Module] = [ConvBNAct(in_channels, stem_channels, 3, 1 if self.small_input else 2,
                                             act=stem_act)]
        ch = stem_channels
        for kernel, expanded, out, se, act, stride in blocks:
            layers.append(InvertedResidual(ch, out, expanded, kernel, stride, se, act))
            ch = out
        layers.append(ConvBNAct(ch, last_channels, 1, act=last_act))
        self.features = nn.Sequential(*layers)
        head: List[nn.Module] = []
        feat = last_channels
        if head_hidden > 0:
            head += [nn.Linear(feat, head_hidden), nn.Hardswish(inplace=True)]
            feat = head_hidden
        head += [nn.Dropout(dropout), nn.Linear(feat, num_classes)]
        self.classifier = nn.Sequential(*head)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


@register_model("mobilenet")
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 width_mult: float = 1.0, **kw: Any) -> MobileNetV2:
    """MobileNetV2 (3.5M params at 1000 classes, width 1.0)."""
    return MobileNetV2(num_classes, in_channels, image_size, width_mult=width_mult, **kw)


@register_model("mobilenet_v3_small", "mobilenet_v3")
def mobilenet_se(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> MobileNetV2:
    """MobileNetV3-small-like: 5x5 depthwise convs, squeeze-excite, hardswish (2.5M params at 1000 classes)."""
    stem, blocks = _v3_small_config()
    return MobileNetV2(num_classes, in_channels, image_size, blocks=blocks, stem_channels=stem, last_channels=576,
                       stem_act="hardswish", last_act="hardswish", head_hidden=1024, **kw)
