"""Models by name: `build_model(name, num_classes=..., in_channels=3, image_size=32, norm="bn")`.

Every model takes norm = "bn" | "inv" | "none" (see models/layers.py for what each means).
"""
from models.layers import NORMS, check_layer_options, check_norm

MODEL_NAMES = ("small_cnn", "resnet18_cifar", "resnet20", "resnet56", "resnet18", "resnet50",
               "vgg11", "vgg16", "vit_tiny")


def _constructor(name):
    # Imported on demand so that building one model does not import all of them.
    if name == "small_cnn":
        from models.small_cnn import SmallCNN
        return lambda image_size, **kw: SmallCNN(**kw)
    if name == "resnet18_cifar":
        from models.resnet import resnet18_cifar
        return lambda image_size, **kw: resnet18_cifar(**kw)
    if name in ("resnet20", "resnet56"):
        from models.resnet import resnet_cifar_thin
        depth = int(name[len("resnet"):])
        return lambda image_size, **kw: resnet_cifar_thin(depth, **kw)
    if name == "resnet18":
        from models.resnet import resnet18
        return lambda image_size, **kw: resnet18(**kw)
    if name == "resnet50":
        from models.resnet import resnet50
        return lambda image_size, **kw: resnet50(**kw)
    if name in ("vgg11", "vgg16"):
        from models.vgg import VGG
        depth = int(name[len("vgg"):])
        return lambda image_size, **kw: VGG(depth, image_size=image_size, **kw)
    from models.vit import vit_tiny
    return lambda image_size, **kw: vit_tiny(image_size=image_size, **kw)


def build_model(name, *, num_classes, in_channels=3, image_size=32, norm="bn",
                layer_options=None):
    """A freshly initialised model `name` (one of MODEL_NAMES).

    layer_options (norm="inv"): a dict with any of block, sampling_stride (int or "auto"),
    stats_budget, n_iter, first_n_iter, stats_every, sync, method, freeze, given to every
    InvConv2d / InvLinear (block, sampling_stride and stats_budget to the convs only,
    first_n_iter to the network's first conv); see toolkit.invariance.options.
    Unknown options or bad values raise a ValueError naming the option."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    check_norm(norm)
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels),
                         ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    options = check_layer_options(norm, layer_options)
    return _constructor(name)(image_size, num_classes=num_classes, in_channels=in_channels,
                              norm=norm, layer_options=options)


__all__ = ["MODEL_NAMES", "NORMS", "build_model"]
