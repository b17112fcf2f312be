"""The invariance layer (scale invariance + GL(n) whitening folded into the weights).

InvConv2d / InvLinear replace Conv2d(+BN) / Linear; the math runs in the C++/CUDA ops of
toolkit._C (torch.ops.invariance).  See docs/invariance-layer.md.
"""
from . import ops
from .modules import InvConv2d, InvLinear
from .convert import convert_model
from .ops import set_small_math_threads, small_math_threads

__all__ = ["InvConv2d", "InvLinear", "convert_model", "ops", "set_small_math_threads",
           "small_math_threads"]
