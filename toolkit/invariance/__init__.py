"""The invariance layer (scale invariance + GL(n) whitening folded into the weights).

InvConv2d / InvLinear replace Conv2d(+BN) / Linear; the math runs in the C++/CUDA ops of
toolkit._C (torch.ops.invariance).  See docs/invariance-layer.md.

`toolkit.invariance.options` (argument checks, LayerOptions) is pure Python and
imports without the compiled extension, so that a run configuration can be checked
anywhere; everything else loads toolkit._C on first use and fails there with the command
that builds it.
"""
import importlib

_EXPORTS = {"InvConv2d": "modules", "InvLinear": "modules", "convert_model": "convert",
            "ops": None, "set_small_math_threads": "ops", "small_math_threads": "ops"}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = _EXPORTS[name]
    module = importlib.import_module(f"{__name__}.{home or name}")
    value = module if home is None else getattr(module, name)
    globals()[name] = value
    return value


__all__ = ["InvConv2d", "InvLinear", "convert_model", "ops", "set_small_math_threads",
           "small_math_threads"]
