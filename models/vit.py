"""A small vision transformer: patch embedding, pre-norm encoder blocks, mean pooling.

Sizes of `vit_tiny`: width 192, 3 heads, 6 blocks, MLP width 384 (ViT-Ti's width and
heads at half its depth and MLP ratio, so that it trains on a CPU). Patch size: 16 for
images of 128 px or more, otherwise image_size // 8 (8x8 = 64 tokens; 4 px on CIFAR,
1 px on 8x8 digits), or one more when only that divides the image (4 px on 28 px
Fashion-MNIST: 7x7 = 49 tokens).

Norms (decided here, documented in docs/models-and-data.md):
* "bn":   LayerNorm before attention, before the MLP and before the head (the transformer
          standard; BatchNorm over token sequences is not used).
* "inv":  every Linear (qkv, proj, both MLP layers, head) is an InvLinear and the patch
          embedding an InvConv2d (n_iter=15, it is the first conv). The LayerNorms are
          dropped: an InvLinear first standardises each token over its features, which
          is exactly LayerNorm without the affine part, so a LayerNorm in front of it
          would be redundant.
* "none": plain Linear layers and no normalisation.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.layers import LayerFactory

TINY = dict(dim=192, depth=6, heads=3, mlp_dim=384)


class SelfAttention(nn.Module):
    def __init__(self, layers, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = layers.linear(dim, 3 * dim)
        self.proj = layers.linear(dim, dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class EncoderBlock(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, layers, dim, heads, mlp_dim):
        super().__init__()
        self.norm1 = layers.token_norm(dim)
        self.attention = SelfAttention(layers, dim, heads)
        self.norm2 = layers.token_norm(dim)
        self.mlp = nn.Sequential(layers.linear(dim, mlp_dim), nn.GELU(),
                                 layers.linear(mlp_dim, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def patch_size_for(image_size):
    patch = 16 if image_size >= 128 else max(1, image_size // 8)
    if image_size % patch and image_size < 128 and image_size % (patch + 1) == 0:
        # 28 px (MNIST, Fashion-MNIST): 28 // 8 = 3 does not divide it, 4 px patches
        # (7 x 7 tokens) do
        patch += 1
    if image_size % patch:
        raise ValueError(f"vit: image_size {image_size} is not a multiple of the patch "
                         f"size {patch}")
    return patch


class VisionTransformer(nn.Module):
    def __init__(self, *, num_classes, in_channels, image_size, norm, dim, depth, heads,
                 mlp_dim, layer_options=None):
        super().__init__()
        layers = LayerFactory(norm, layer_options)
        self.norm = norm
        patch = patch_size_for(image_size)
        tokens = (image_size // patch) ** 2
        self.patch_embed = layers.patch_conv(in_channels, dim, patch)
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(layers, dim, heads, mlp_dim)
                                      for _ in range(depth)])
        self.final_norm = layers.token_norm(dim)
        self.head = layers.linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.position, std=0.02)
        for module in self.modules():
            if type(module) is nn.Linear:  # the invariance layers own their initialisation
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.position
        x = self.final_norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def vit_tiny(**kwargs):
    return VisionTransformer(**TINY, **kwargs)
