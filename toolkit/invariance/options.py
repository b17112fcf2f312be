"""Argument checking and the derived quantities of the invariance layer: block size, window,
method, the statistics-refresh schedule (stats_every, freeze) and the budgeted sampling stride;
and LayerOptions, the checked options of every layer of a network.

Every bad argument is a ValueError that names the argument, raised when the layer (or the
LayerOptions) is built.
"""
import math
import numbers
from dataclasses import asdict, dataclass, fields

NORMS = ("sample", "local", "none")
METHODS = ("auto", "newton", "spectral")
# What a stale step (stats_every > 1 or freeze) folds into the weights: the running
# averages (the method as specified), the last refresh step's batch statistics, the
# running whitening with this batch's mean, this batch's statistics held fixed in the
# backward pass, or this batch's statistics from SPARSE_ROWS times fewer sampled rows with
# their gradient (docs/invariance-layer.md, "Refresh rules").
REFRESH_RULES = ("ema", "last", "center", "batch", "sampled")
SPARSE_ROWS = 4  # conv: twice the sampling stride in both directions; linear: every 4th row

# The network's first conv whitens raw pixels, whose patch covariance is badly conditioned:
# it gets three times the Newton-Schulz iterations of every other layer.
FIRST_CONV_N_ITER = 15

# freeze=True: the authors' counter is incremented before the test, so 1-based step n uses
# batch statistics when n % 1000 <= 100 (steps 1-100, 1000-1100, 2000-2100, ...).
FREEZE_PERIOD = 1000
FREEZE_ACTIVE = 100

# stats_every > 1: every step refreshes until the identity initialisation of the running
# buffers weighs at most this much in their EMA, (1 - momentum)^steps <= WARM_START_RESIDUAL.
WARM_START_RESIDUAL = 0.05

# sampling_stride="auto" without an explicit stats_budget: statistics at most a quarter of
# the conv's forward flops.
DEFAULT_STATS_BUDGET = 0.25


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


def common(eps, n_iter, momentum, norm, freeze, sync, method, stats_every=1, norms=NORMS,
           refresh="ema"):
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
    positive_int("stats_every", stats_every)
    if stats_every > 1 and freeze:
        raise ValueError("stats_every > 1 and freeze=True are two refresh schedules; "
                         "choose one (freeze needs stats_every=1)")
    if stats_every > 1 and momentum == 0:
        raise ValueError("stats_every > 1 needs momentum > 0: stale steps fold the running "
                         "buffers, which momentum=0 never moves from their initialisation")
    refresh_rule(refresh, stats_every, freeze)


def refresh_rule(refresh, stats_every, freeze):
    """The refresh argument: one of REFRESH_RULES; a rule other than "ema" only where there
    are stale steps to apply it to (stats_every > 1 or freeze)."""
    if refresh not in REFRESH_RULES:
        raise ValueError(f"refresh must be one of {', '.join(REFRESH_RULES)}, got {refresh!r}")
    if refresh != "ema" and stats_every == 1 and not freeze:
        raise ValueError(f"refresh={refresh!r} needs stale steps (stats_every > 1 or freeze); "
                         "with stats_every=1 every step uses its batch statistics")
    return refresh


def warm_start_steps(stats_every, momentum):
    """Leading training steps that all refresh the statistics when stats_every > 1: enough
    for the identity initialisation to weigh <= WARM_START_RESIDUAL in the running buffers
    (29 steps for momentum 0.1), so that no stale step folds an almost-identity whitening."""
    if stats_every == 1 or momentum >= 1.0:
        return 0 if stats_every == 1 else 1
    return math.ceil(math.log(WARM_START_RESIDUAL) / math.log1p(-momentum))


def refreshes_statistics(step, stats_every, warm_start, freeze):
    """Whether training step `step` (0-based: the number of training steps before it)
    computes batch statistics; otherwise it folds the running buffers."""
    if freeze:
        return (step + 1) % FREEZE_PERIOD <= FREEZE_ACTIVE
    return step < warm_start or step % stats_every == 0


def sampling_stride(value, stats_budget):
    """The sampling_stride argument: an integer >= 1, or "auto" to pick it per layer from
    stats_budget (a number > 0, only read with "auto") with budget_sampling_stride."""
    if not isinstance(stats_budget, numbers.Real) or isinstance(stats_budget, bool) or \
            not 0 < stats_budget < math.inf:
        raise ValueError(f"stats_budget must be a number > 0, got {stats_budget!r}")
    if value == "auto":
        return value
    if not _is_int(value) or value < 1:
        raise ValueError(f"sampling_stride must be an integer >= 1 or 'auto', got {value!r}")
    return int(value)


def budget_sampling_stride(kernel, block, out_per_group, stats_budget):
    """Smallest sampling stride s whose statistics cost at most `stats_budget` of the conv's
    forward flops under the cost model k^2 B / (s^2 C_out) (docs/invariance-layer.md, "Cost";
    C_out per group).  For 1x1 convs s^2 is the row subsampling of the flattened input."""
    area = kernel[0] * kernel[1]
    s = 1
    while area * block > stats_budget * out_per_group * s * s:
        s += 1
    return s


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


# ---- the options a whole network takes (models.build_model, the run configuration) ------

# Linear layers keep their own block (the full width up to 512) and are never sampled.
CONV_ONLY = ("block", "sampling_stride", "stats_budget")


class LayerOptionError(ValueError):
    """A bad network-wide layer option: `option` names it (None: a combination of options),
    `problem` says what is wrong; str() is one line, `option problem`."""

    def __init__(self, option, problem):
        self.option, self.problem = option, problem
        super().__init__(f"{option} {problem}" if option else problem)


@dataclass(frozen=True)
class LayerOptions:
    """The options of every invariance layer of a network, checked once, when built.

    Built from the run configuration (RunConfig.layer_options()) or from a dict
    (LayerOptions.build), then handed to models.build_model and models.layers.LayerFactory,
    which use it as it is. Bad values raise a one-line LayerOptionError naming the option.
    sampling_stride may be given as a string ("3", "auto"), as on a command line."""

    block: int = 64
    sampling_stride: object = 3
    stats_budget: float = DEFAULT_STATS_BUDGET
    n_iter: int = 5
    first_n_iter: int = FIRST_CONV_N_ITER
    stats_every: int = 1
    sync: bool = False
    method: str = "auto"
    freeze: bool = False
    refresh: str = "ema"

    def __post_init__(self):
        for name in ("block", "n_iter", "first_n_iter", "stats_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise LayerOptionError(name, f"must be an integer >= 1, got {value!r}")
        stride = self.sampling_stride
        if isinstance(stride, str) and stride.strip().isdigit():
            stride = int(stride)
        if stride != "auto" and (not _is_int(stride) or stride < 1):
            raise LayerOptionError("sampling_stride", f"must be an integer >= 1 or 'auto', "
                                   f"got {self.sampling_stride!r}")
        budget = self.stats_budget
        if not isinstance(budget, numbers.Real) or isinstance(budget, bool) or \
                not 0 < budget < math.inf:
            raise LayerOptionError("stats_budget", f"must be a finite number > 0, got {budget!r}")
        for name in ("sync", "freeze"):
            if not isinstance(getattr(self, name), bool):
                raise LayerOptionError(name, f"must be true or false, got "
                                       f"{getattr(self, name)!r}")
        if self.method not in METHODS:
            raise LayerOptionError("method", f"must be one of {', '.join(METHODS)}, got "
                                   f"{self.method!r}")
        if self.stats_every > 1 and self.freeze:
            raise LayerOptionError(None, "stats_every > 1 and freeze are two refresh "
                                   "schedules; choose one (freeze needs stats_every 1)")
        try:
            refresh_rule(self.refresh, self.stats_every, self.freeze)
        except ValueError as exc:
            raise LayerOptionError(None if self.refresh in REFRESH_RULES else "refresh",
                                   str(exc).removeprefix("refresh ")) from None
        object.__setattr__(self, "sampling_stride", stride if stride == "auto" else int(stride))
        object.__setattr__(self, "stats_budget", float(budget))
        for name in ("block", "n_iter", "first_n_iter", "stats_every"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @classmethod
    def build(cls, given=None):
        """LayerOptions from None (the defaults), a dict (missing or None entries take their
        default; unknown names are refused) or a LayerOptions (returned as it is)."""
        if given is None or isinstance(given, cls):
            return given or cls()
        if not isinstance(given, dict):
            raise LayerOptionError(None, f"layer_options must be a dict or LayerOptions, got "
                                   f"{type(given).__name__}")
        names = [spec.name for spec in fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise LayerOptionError(None, f"unknown layer option {unknown[0]!r}; choose from "
                                   f"{', '.join(names)}")
        return cls(**{k: v for k, v in given.items() if v is not None})

    def changed(self):
        """Names of the options that are not their default, in declaration order."""
        return [spec.name for spec in fields(self) if getattr(self, spec.name) != spec.default]

    def for_norm(self, norm):
        """self, unless norm is not "inv" and an option was changed: it would do nothing."""
        changed = self.changed()
        if norm != "inv" and changed:
            raise LayerOptionError(changed[0], f"applies only to norm inv, got "
                                   f"{getattr(self, changed[0])!r} with norm {norm!r}")
        return self

    def as_dict(self):
        return asdict(self)

    def conv_kwargs(self, first=False):
        """Keyword arguments of one InvConv2d; the network's first conv gets first_n_iter."""
        kwargs = {k: v for k, v in self.as_dict().items() if k != "first_n_iter"}
        if first:
            kwargs["n_iter"] = self.first_n_iter
        return kwargs

    def linear_kwargs(self):
        """Keyword arguments of one InvLinear (no conv-only options)."""
        return {k: v for k, v in self.conv_kwargs().items() if k not in CONV_ONLY}
