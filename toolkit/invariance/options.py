"""Argument checking and the derived sizes of the invariance layer (block, window, method).

Every bad argument is a ValueError that names the argument, raised when the layer is built.
"""
import math
import numbers

NORMS = ("sample", "local", "none")
METHODS = ("auto", "newton", "spectral")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name, value, minimum=1):
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def pair(name, value, minimum):
    """An int or a pair of ints, each >= minimum, as a tuple of two ints."""
    items = (value, value) if _is_int(value) else value
    if not isinstance(items, (tuple, list)) or len(items) != 2 or \
            not all(_is_int(v) and v >= minimum for v in items):
        raise ValueError(f"{name} must be an integer >= {minimum} or a pair of them, "
                         f"got {value!r}")
    return int(items[0]), int(items[1])


def flag(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def common(eps, n_iter, momentum, norm, freeze, sync, method, norms=NORMS):
    """Checks the arguments shared by InvConv2d and InvLinear."""
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    positive_int("n_iter", n_iter)
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool) or \
            not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if norm not in norms:
        raise ValueError(f"norm must be one of {', '.join(norms)}, got {norm!r}")
    flag("freeze", freeze)
    flag("sync", sync)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def block_size(block, channels):
    """B = min(block, C), or gcd(B, C) when B does not divide C (spec 3, notation)."""
    b = min(block, channels)
    return b if channels % b == 0 else math.gcd(b, channels)


def local_window(kernel, dilation):
    """Window of the local statistics: 2 (k - 1) dilation + 3 (odd, covers the receptive field)."""
    return 2 * (max(kernel) - 1) * max(dilation) + 3


def resolve_method(method, device):
    """'auto': one eigendecomposition on the CPU, the matrix-product loop on GPUs."""
    if method != "auto":
        return method
    return "spectral" if device.type == "cpu" else "newton"
