"""Turns an ordinary network into one with invariance layers (docs/invariance-layer.md).

Every Conv2d becomes an InvConv2d and every Linear an InvLinear (weights copied, bias
added where there was none), BatchNorm layers become Identity.  The first conv of the
network gets first_n_iter (15), all others the given n_iter.
"""
import torch
from torch import nn

from .modules import InvConv2d, InvLinear
from .options import CONV_ONLY, FIRST_CONV_N_ITER

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def convert_model(model, *, first_n_iter=FIRST_CONV_N_ITER, **layer_options):
    """Returns `model` with its Conv2d/Linear/BatchNorm replaced in place (see module doc).

    layer_options go to every InvConv2d/InvLinear (block, n_iter, eps, momentum, norm, ...);
    `block`, `sampling_stride` and `stats_budget` only to the convolutions.
    """
    state = {"first": True}
    linear_options = {k: v for k, v in layer_options.items() if k not in CONV_ONLY}
    _convert(model, state, first_n_iter, layer_options, linear_options)
    return model


def _convert(module, state, first_n_iter, conv_options, linear_options):
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and not isinstance(child, InvConv2d):
            opts = dict(conv_options)
            if state["first"]:
                opts["n_iter"] = first_n_iter
                state["first"] = False
            new = InvConv2d(child.in_channels, child.out_channels, child.kernel_size,
                            child.stride, child.padding, child.dilation, child.groups,
                            True, **opts)
            _copy_parameters(child, new)
        elif isinstance(child, nn.Linear) and not isinstance(child, InvLinear):
            new = InvLinear(child.in_features, child.out_features, True, **linear_options)
            _copy_parameters(child, new)
        elif isinstance(child, _BATCHNORMS):
            new = nn.Identity()
        else:
            _convert(child, state, first_n_iter, conv_options, linear_options)
            continue
        setattr(module, name, new)


def _copy_parameters(old, new):
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
        else:
            new.bias.zero_()
    new.to(device=old.weight.device, dtype=old.weight.dtype)
