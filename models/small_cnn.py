"""A small CNN for the 8x8 one-channel digits (and any small image).

Three 3x3 convs (16, 32, 64 channels; the last two stride 2: 8x8 -> 4x4 -> 2x2), global
average pooling and a linear classifier: about 24k parameters, so a few epochs of 2-rank
training on the 1,797 digits take seconds on one thread. With norm="inv" every conv is an
InvConv2d (the first with n_iter=15) and the classifier an InvLinear.
"""
from torch import nn

from models.layers import LayerFactory, init_plain_layers

WIDTHS = (16, 32, 64)


class SmallCNN(nn.Module):
    def __init__(self, *, num_classes, in_channels, norm, layer_options=None):
        super().__init__()
        layers = LayerFactory(norm, layer_options)
        self.norm = norm
        c1, c2, c3 = WIDTHS
        self.features = nn.Sequential(
            layers.conv_relu(in_channels, c1, 3, 1, 1, first=True),
            layers.conv_relu(c1, c2, 3, 2, 1),
            layers.conv_relu(c2, c3, 3, 2, 1),
            nn.AdaptiveAvgPool2d(1))
        self.classifier = layers.linear(c3, num_classes)
        init_plain_layers(self)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
