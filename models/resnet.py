"""Residual networks: CIFAR variants (resnet18_cifar, resnet20, resnet56) and ImageNet
variants (resnet18, resnet50), each with norm = bn | inv | none (see models/layers.py).

Block order: [conv+norm] -> ReLU -> [conv+norm] + shortcut -> ReLU.
With norm="inv" each [conv+norm] is one InvConv2d; the 1x1 downsample conv of a
projection shortcut goes through the same factory, so it is replaced too.
"""
import torch
from torch import nn

from models.layers import LayerFactory, init_plain_layers


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, layers, in_planes, planes, stride):
        super().__init__()
        self.conv1 = layers.conv(in_planes, planes, 3, stride, 1)
        self.conv2 = layers.conv(planes, planes, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(layers, in_planes, planes, stride)

    def forward(self, x):
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        return self.relu(out + self.shortcut(x))

    def last_conv(self):
        return self.conv2


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand, as in ResNet-50 v1.5."""
    expansion = 4

    def __init__(self, layers, in_planes, planes, stride):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = layers.conv(in_planes, planes, 1)
        self.conv2 = layers.conv(planes, planes, 3, stride, 1)
        self.conv3 = layers.conv(planes, out_planes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(layers, in_planes, out_planes, stride)

    def forward(self, x):
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out))
        out = self.conv3(out)
        return self.relu(out + self.shortcut(x))

    def last_conv(self):
        return self.conv3


def _shortcut(layers, in_planes, out_planes, stride):
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return layers.conv(in_planes, out_planes, 1, stride, 0)


class ResNet(nn.Module):
    """A stem, residual stages, global average pooling and a linear classifier.

    `stem="cifar"`: one 3x3 stride-1 conv (32x32 inputs keep their resolution).
    `stem="imagenet"`: 7x7 stride-2 conv and 3x3 stride-2 max pooling.
    """

    def __init__(self, block, blocks_per_stage, widths, *, num_classes, in_channels, norm,
                 stem, layer_options=None):
        super().__init__()
        layers = LayerFactory(norm, layer_options)
        self.norm = norm
        stem_width = widths[0]
        if stem == "cifar":
            self.stem = layers.conv_relu(in_channels, stem_width, 3, 1, 1, first=True)
        else:
            self.stem = nn.Sequential(
                layers.conv_relu(in_channels, stem_width, 7, 2, 3, first=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        stages, in_planes = [], stem_width
        for index, (count, width) in enumerate(zip(blocks_per_stage, widths)):
            stride = 1 if index == 0 else 2
            stage = []
            for block_index in range(count):
                stage.append(block(layers, in_planes, width, stride if block_index == 0 else 1))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = layers.linear(in_planes, num_classes)
        init_plain_layers(self)
        if norm == "none":
            # Without normalisation each residual sum adds the branch variance to the
            # trunk's: with He init that doubles it at every block (2^27 for ResNet-56).
            # Scaling each branch's last conv by 1/sqrt(#blocks) bounds the growth to
            # (1 + 1/L)^L < e at any depth L, while every weight still gets a gradient.
            blocks = [m for m in self.modules() if isinstance(m, (BasicBlock, Bottleneck))]
            with torch.no_grad():
                for block_module in blocks:
                    block_module.last_conv().weight.mul_(len(blocks) ** -0.5)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.classifier(self.pool(x).flatten(1))


def resnet18_cifar(**kwargs):
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), stem="cifar", **kwargs)


def resnet_cifar_thin(depth, **kwargs):
    """The 6n+2-layer CIFAR ResNets of He et al. (16/32/64 channels), with 1x1 projections."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), stem="cifar", **kwargs)


def resnet18(**kwargs):
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), stem="imagenet", **kwargs)


def resnet50(**kwargs):
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), stem="imagenet", **kwargs)
