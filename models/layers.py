"""The one place that maps a `norm` choice to concrete conv / linear layers.

Every model in this package asks a `LayerFactory` for its layers instead of building
`nn.Conv2d` / `nn.BatchNorm2d` directly, so that one model definition serves all three
normalisation schemes:

* ``"bn"``   Conv2d(bias=False) -> BatchNorm2d             (the usual baseline)
* ``"inv"``  InvConv2d(bias=True), no BatchNorm            (the invariance layer replaces
             conv + BN; see docs/invariance-layer.md). Linear layers become InvLinear.
* ``"none"`` Conv2d(bias=True), no normalisation           (ablation baseline)

The activation is never part of what the factory returns: residual blocks add the
shortcut before their last ReLU, so the caller decides where the ReLU goes.
"""
from torch import nn

from toolkit.invariance.options import LayerOptions

# The norm registry: name -> what it puts in place of conv + BatchNorm (the --norm choices
# and their help text come from here).
NORMS = {"bn": "BatchNorm", "inv": "the invariance layer", "none": "plain convs"}


def check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")
    return norm


def _invariance_module():
    """toolkit.invariance, imported only when norm="inv" is asked for, so that "bn"/"none"
    models work without the compiled extension (whose ImportError says how to build it)."""
    import toolkit.invariance as invariance
    return invariance


class LayerFactory:
    """Builds the norm-dependent layers of one network.

    `conv(...)` returns a module computing "conv followed by its normalisation" (no
    activation). The first call with ``first=True`` marks the network's input conv.
    `layer_options`: the options of every invariance layer, a
    toolkit.invariance.options.LayerOptions (used as it is: it was checked when built), a
    dict (built into one here) or None (the defaults). With norm "bn" / "none" an option
    that is not its default is an error: it would silently do nothing.
    """

    def __init__(self, norm, layer_options=None):
        self.norm = check_norm(norm)
        self.layer_options = LayerOptions.build(layer_options).for_norm(norm)
        self._inv = _invariance_module() if norm == "inv" else None

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
             groups=1, first=False):
        if self.norm == "inv":
            kwargs = self.layer_options.conv_kwargs(first)
            return self._inv.InvConv2d(in_channels, out_channels, kernel_size, stride=stride,
                                       padding=padding, groups=groups, bias=True, **kwargs)
        if self.norm == "bn":
            return nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                          padding=padding, groups=groups, bias=False),
                nn.BatchNorm2d(out_channels))
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, groups=groups, bias=True)

    def conv_relu(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                  first=False):
        return nn.Sequential(
            self.conv(in_channels, out_channels, kernel_size, stride, padding, first=first),
            nn.ReLU(inplace=True))

    def patch_conv(self, in_channels, out_channels, patch):
        """The patch embedding of a transformer (the network's first conv).

        Only "inv" replaces it; with "bn" the transformer normalises tokens with
        LayerNorm instead, so the embedding is a plain conv with bias.
        """
        if self.norm == "inv":
            return self.conv(in_channels, out_channels, patch, patch, 0, first=True)
        return nn.Conv2d(in_channels, out_channels, patch, stride=patch, bias=True)

    def linear(self, in_features, out_features, bias=True):
        """A fully connected layer; with norm="inv" the InvLinear (block = full width)."""
        if self.norm == "inv":
            kwargs = self.layer_options.linear_kwargs()
            return self._inv.InvLinear(in_features, out_features, bias=bias, **kwargs)
        return nn.Linear(in_features, out_features, bias=bias)

    def token_norm(self, features):
        """Normalisation of transformer tokens (B, T, F) before attention / MLP / head.

        "bn": LayerNorm (the transformer standard; BatchNorm does not suit token
        sequences). "inv": identity, because every InvLinear that follows already
        standardises each token over its features (scale-invariance transform, spec
        section 2), which is LayerNorm without the affine part. "none": identity.
        """
        if self.norm == "bn":
            return nn.LayerNorm(features)
        return nn.Identity()


def init_plain_layers(model):
    """He initialisation of the plain Conv2d layers and zero biases.

    Only exact nn.Conv2d / nn.BatchNorm2d instances are touched: the invariance layers
    own their initialisation.
    """
    for module in model.modules():
        if type(module) is nn.Conv2d:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif type(module) is nn.BatchNorm2d:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
