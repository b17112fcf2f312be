"""VGG-11 and VGG-16 (configurations A and D of Simonyan & Zisserman) with norm = bn|inv|none.

The convolutional part is the original one. The classifier is the compact form used
for CIFAR (global average pooling -> one linear layer) at every image size, instead of
the three 4096-wide layers of the ImageNet original (120M parameters, which would
dominate both memory and communication). Max pooling is skipped once the feature map is
1x1, so small inputs (e.g. 8x8 digits) work too.
"""
from torch import nn

from models.layers import LayerFactory, init_plain_layers

POOL = "M"
CONFIGS = {
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL,
         512, 512, 512, POOL),
}


class VGG(nn.Module):
    def __init__(self, depth, *, num_classes, in_channels, image_size, norm,
                 layer_options=None):
        super().__init__()
        layers = LayerFactory(norm, layer_options)
        self.norm = norm
        features, channels, size = [], in_channels, image_size
        for item in CONFIGS[depth]:
            if item == POOL:
                if size >= 2:
                    features.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    size //= 2
                continue
            features.append(layers.conv_relu(channels, item, 3, 1, 1, first=not features))
            channels = item
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*features)
        self.classifier = layers.linear(channels, num_classes)
        init_plain_layers(self)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
