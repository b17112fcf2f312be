"""Models by name: `build_model(name, num_classes=..., in_channels=3, image_size=32, norm="bn")`.

Every model takes norm = "bn" | "inv" | "none" (the NORMS registry in models/layers.py says
what each means). MODELS is the model registry: the --model choices come from it.
"""
from models.layers import NORMS


def _small_cnn(image_size, **kw):
    from models.small_cnn import SmallCNN
    return SmallCNN(**kw)


def _resnet(builder_name, *args):
    def build(image_size, **kw):
        import models.resnet as resnet
        return getattr(resnet, builder_name)(*args, **kw)
    return build


def _vgg(depth):
    def build(image_size, **kw):
        from models.vgg import VGG
        return VGG(depth, image_size=image_size, **kw)
    return build


def _vit_tiny(image_size, **kw):
    from models.vit import vit_tiny
    return vit_tiny(image_size=image_size, **kw)


# name -> builder(image_size, *, num_classes, in_channels, norm, layer_options); each model
# module is imported when its model is built.
MODELS = {
    "small_cnn": _small_cnn,
    "resnet18_cifar": _resnet("resnet18_cifar"),
    "resnet20": _resnet("resnet_cifar_thin", 20),
    "resnet56": _resnet("resnet_cifar_thin", 56),
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "vgg11": _vgg(11),
    "vgg16": _vgg(16),
    "vit_tiny": _vit_tiny,
}
MODEL_NAMES = tuple(MODELS)


def build_model(name, *, num_classes, in_channels=3, image_size=32, norm="bn",
                layer_options=None):
    """A freshly initialised model `name` (one of MODEL_NAMES).

    layer_options (norm="inv"): a toolkit.invariance.options.LayerOptions, or a dict with
    any of its fields (block, sampling_stride (int or "auto"), stats_budget, n_iter,
    first_n_iter, stats_every, sync, method, freeze), given to every InvConv2d / InvLinear
    (block, sampling_stride and stats_budget to the convs only, first_n_iter to the network's
    first conv). They, and norm, are checked once, by the model's LayerFactory: unknown
    options or bad values raise a ValueError naming the option."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels),
                         ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return MODELS[name](image_size, num_classes=num_classes, in_channels=in_channels,
                        norm=norm, layer_options=layer_options)


__all__ = ["MODELS", "MODEL_NAMES", "NORMS", "build_model"]
