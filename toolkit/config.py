"""The run configuration of `python -m launch.train`: one typed dataclass.

Every option is declared once, as a field of `RunConfig`; its metadata carries the help text
and the --help group, and the command-line parser is generated from the fields. The values
are checked once, by `RunConfig.validate()`, which raises `ConfigError` (one line) before
anything is written. A run saves its configuration as config.json; `--config FILE` starts
from such a file and flags given on the command line override it.

Adding an option: one field here (with `option(...)`), its check in `validate()`, and the
code that reads `cfg.<name>`. If a checkpoint must agree on it, add it to `RESUME_KEYS`.
Choices that a registry holds (models, norms, data sets, strategies) are read from it.

Other command lines (benchmarks, studies) take the options that mean the same thing as a
training option with `add_run_options(parser, names)` and check them with
`check_run_options`: same flag, type, choices, help and checks as launch.train.
"""
import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields

from toolkit.invariance.options import METHODS, LayerOptionError, LayerOptions

# What a checkpoint must agree with to be resumed by this run (besides the world size).
RESUME_KEYS = ("model", "norm", "dataset", "train_subset", "val_size", "batch_size", "strategy",
               "period", "delay", "seed", "optimizer", "betas", "label_smoothing", "grad_clip",
               "amp")
# Written into config.json beside the options: facts of the run, not choices.
RUN_FACTS = ("world_size", "launcher")
# Run-specific: a saved configuration re-runs into a new directory unless told otherwise.
NOT_LOADED = ("out", "resume", "config")


class ConfigError(ValueError):
    """A bad option value; the message is one line naming the option."""


def option(default, help, group, *, choices=None, flag=None, metavar=None, nargs=None,
           const=None, type=None, parser_choices=True):
    """A RunConfig field with what its command-line flag needs. help and choices may be
    functions (read from a registry when a parser is made or values are checked); type is
    the flag's parser of the text (default: from the field's annotation). parser_choices
    False: the choices are checked by validate() only (its one-line error lists them), not
    by argparse."""
    meta = {"help": help, "group": group, "choices": choices, "flag": flag,
            "metavar": metavar, "nargs": nargs, "const": const, "type": type,
            "parser_choices": parser_choices}
    return field(default=default, metadata=meta)


def _resolve(value):
    return value() if callable(value) else value


# The choices and help of --model, --norm, --dataset and --strategy come from the registries
# (models.MODELS, models.layers.NORMS, toolkit.data.DATASETS, toolkit.strategies.STRATEGIES),
# imported when asked, not with this module: launch.train parses options after its signal
# set-up, and the registries bring torch.

def model_names():
    from models import MODEL_NAMES
    return MODEL_NAMES


def model_help():
    return "model name: " + ", ".join(model_names())


def norm_names():
    from models.layers import NORMS
    return tuple(NORMS)


def norm_help():
    from models.layers import NORMS
    return ", ".join(f"{name} = {about}" for name, about in NORMS.items())


def dataset_names():
    from toolkit.data import DATASETS
    return tuple(DATASETS)


def dataset_help():
    from toolkit.data import DATASETS
    return "dataset name: " + ", ".join(f"{name} ({load.about})"
                                        for name, load in DATASETS.items())


def strategy_names():
    from toolkit.strategies import STRATEGY_NAMES
    return STRATEGY_NAMES


def strategy_help():
    from toolkit.strategies import STRATEGIES
    return "; ".join(f"{name}: {cls.about}" for name, cls in STRATEGIES.items())


def int_or_auto(text):
    """Parses an option that takes an integer or the word `auto`."""
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}")


MODEL, DIST, OPT, LAYER, RUN = ("model and data", "distributed strategy", "optimisation",
                                "invariance layer (--norm inv)", "run, checkpoints and logging")


@dataclass
class RunConfig:
    # model and data
    model: str = option("small_cnn", model_help, MODEL, choices=model_names,
                        parser_choices=False, metavar="NAME")
    norm: str = option("inv", norm_help, MODEL, choices=norm_names)
    dataset: str = option("digits", dataset_help, MODEL, choices=dataset_names,
                          parser_choices=False, metavar="NAME")
    data_dir: str = option(None, "dataset location on disk (fashion_mnist without it: "
                           "where Debian's dataset-fashion-mnist puts its files)", MODEL)
    val_size: int = option(None, "fashion_mnist, mnist: training images held out for "
                           "validation, drawn with a fixed seed (not --seed) from the whole "
                           "training file; 0: none; none given: 5000", MODEL, metavar="N")
    train_subset: int = option(None, "fashion_mnist, mnist: train on only the first N training "
                               "images of the file that are not held out for validation "
                               "(the validation part stays the same); none given: all",
                               MODEL, metavar="N")
    image_size: int = option(None, "image size for imagefolder/synthetic data; none given: 224 "
                             "for imagefolder, 32 for synthetic", MODEL)
    workers: int = option(None, "data loader worker processes per rank, kept across epochs "
                          "(0: load in the training process); none given: the cores of this "
                          "rank minus its compute threads", MODEL)
    # distributed strategy
    strategy: str = option("dasgd", strategy_help, DIST, choices=strategy_names)
    period: int = option(1, "H: steps between averages", DIST)
    delay: object = option(1, "d: steps an average travels before it is merged (dasgd); "
                           "auto: the smallest d (1..8) with one measured average <= d steps, "
                           "re-checked every epoch", DIST, metavar="D|auto", type=int_or_auto)
    avg_dtype: str = option("fp32", "dtype the dasgd average travels in (weights stay fp32); "
                            "bf16/fp16 send the difference to the last merged average",
                            DIST, choices=("fp32", "bf16", "fp16"))
    fragments: int = option(1, "dasgd streamed averaging: F parts of about equal bytes, "
                            "averaged in turn over the period", DIST)
    warmup_steps: int = option(0, "synchronous steps before DaSGD starts", DIST)
    # optimisation
    epochs: int = option(15, "passes over the training set", OPT)
    batch_size: int = option(32, "batch per rank", OPT)
    lr: float = option(0.1, "learning rate of one worker; see --lr-scaling", OPT)
    lr_scaling: str = option("linear", "linear: multiply --lr by the number of ranks", OPT,
                             choices=("linear", "none"))
    schedule: str = option("cosine", "per step: cosine to 0, or 10x drops at 50%% and 75%% of "
                           "training", OPT, choices=("cosine", "step"))
    warmup_epochs: float = option(0.0, "linear warm-up from --lr to the scaled lr (from 0 "
                                  "when they are equal: one rank or --lr-scaling none)", OPT)
    optimizer: str = option("sgd", "sgd: momentum SGD with L2 weight decay; adamw: Adam with "
                            "decoupled weight decay (not on biases and per-channel scales)", OPT,
                            choices=("sgd", "adamw"))
    momentum: float = option(0.9, "SGD momentum", OPT)
    weight_decay: float = option(5e-4, "weight decay (SGD: added to the gradient; AdamW: "
                                 "decoupled)", OPT)
    betas: str = option("0.9,0.999", "AdamW's two moment decay rates", OPT, metavar="B1,B2")
    label_smoothing: float = option(0.0, "label smoothing of the training loss (0: none)", OPT)
    grad_clip: float = option(0.0, "clip the global gradient norm to this value, after any "
                              "gradient averaging (0: no clipping)", OPT)
    amp: str = option("off", "mixed precision of the forward pass and the loss: bf16, or fp16 "
                      "with dynamic loss scaling; weights, optimizer state and averages stay "
                      "fp32", OPT, choices=("off", "bf16", "fp16"))
    seed: int = option(0, "seeds the model init, the data split, shuffling and augmentation",
                       OPT)
    max_steps: int = option(0, "stop after this many steps in total (0: all epochs)", OPT)
    # invariance layer: inv_X is LayerOptions.X (its default, and its checks, are there)
    inv_block: int = option(LayerOptions.block, "channels per covariance block of a conv "
                            "layer", LAYER)
    inv_sampling_stride: object = option(
        LayerOptions.sampling_stride, "patches sampled every S x conv-stride pixels; `auto` "
        "picks each layer's S from --inv-stats-budget", LAYER, metavar="S|auto",
        type=int_or_auto)
    inv_stats_budget: float = option(
        LayerOptions.stats_budget, "with --inv-sampling-stride auto: the statistics may cost "
        "at most this fraction of the layer's convolution", LAYER)
    inv_n_iter: int = option(LayerOptions.n_iter, "Newton-Schulz iterations of every layer "
                             "but the first conv", LAYER)
    inv_first_n_iter: int = option(LayerOptions.first_n_iter, "Newton-Schulz iterations of "
                                   "the network's first conv", LAYER)
    inv_stats_every: int = option(LayerOptions.stats_every, "k: batch statistics on every "
                                  "k-th training step, the running averages on the others "
                                  "(1: every step)", LAYER)
    inv_sync: bool = option(LayerOptions.sync, "average the statistics over all ranks "
                            "(blocking; leave it off under dasgd)", LAYER)
    inv_method: str = option(LayerOptions.method, "inverse square root: spectral (one "
                             "eigendecomposition), newton (matrix products), auto (spectral "
                             "on the CPU, newton on GPUs)", LAYER, choices=METHODS)
    inv_freeze: bool = option(LayerOptions.freeze, "batch statistics only on the first 100 "
                              "of every 1000 steps", LAYER)
    # run, checkpoints and logging
    out: str = option(None, "output directory; none given: "
                      "runs/<time>_<model>_<norm>_<strategy>_np<N>", RUN)
    checkpoint_interval: int = option(0, "also checkpoint every N steps (0: only at the end of "
                                      "each epoch)", RUN)
    eval_interval: int = option(0, "also evaluate (val and test) every STEPS global steps, "
                                "each evaluation logged with its step (0: only at the end of "
                                "each epoch)", RUN, metavar="STEPS")
    keep: int = option(3, "checkpoints to keep", RUN)
    resume: str = option(None, "continue from the newest checkpoint in --out (or from CKPT)",
                         RUN, nargs="?", const="latest", metavar="CKPT")
    stop_after_epochs: int = option(0, "checkpoint and exit after this many epochs in this "
                                    "invocation (time-sliced jobs; continue with --resume)", RUN)
    log_interval: int = option(10, "steps per metrics line", RUN)
    progress: str = option("auto", "tqdm bar on rank 0: auto = only when stderr is a terminal",
                           RUN, choices=("auto", "always", "never"))
    device: str = option("auto", "auto: one GPU per rank (local rank) when CUDA is available, "
                         "else the CPU. GPU runs need a Horovod built with GPU support", RUN,
                         choices=("auto", "cpu", "cuda"))
    threads: int = option(0, "torch threads per rank (0: $OMP_NUM_THREADS, else the cores this "
                          "process may use / ranks on this node)", RUN)
    debug: bool = option(False, "on a failure, print the Python traceback before the one-line "
                         "error (exit codes are unchanged)", RUN)
    tensorboard: bool = option(None, "rank 0 also writes the scalars of metrics.jsonl as "
                               "TensorBoard event files in OUT/tensorboard/ (view them with "
                               "`tensorboard --logdir OUT`); none given: on when the "
                               "tensorboard package can be imported", RUN)

    # ---- checks ---------------------------------------------------------------------------

    def validate(self):
        """Everything visible from the values alone; raises ConfigError (one line)."""
        for spec in fields(self):
            choices = _resolve(spec.metadata.get("choices"))
            # (the --inv-* options are checked by the layer's LayerOptions, below)
            if choices and not spec.name.startswith("inv_") and \
                    getattr(self, spec.name) not in choices:
                _fail(spec.name, f"must be one of {', '.join(choices)}",
                      getattr(self, spec.name))
        for name in ("epochs", "batch_size", "period", "fragments", "keep", "log_interval"):
            _check_int(name, getattr(self, name), 1)
        from toolkit.strategies.auto_delay import check_delay
        try:
            check_delay(self.delay)
        except ValueError as exc:
            raise ConfigError(f"--{exc}") from None
        for name in ("warmup_steps", "max_steps", "checkpoint_interval", "eval_interval",
                     "threads", "stop_after_epochs", "seed"):
            _check_int(name, getattr(self, name), 0)
        for name in ("weight_decay", "momentum", "warmup_epochs", "grad_clip",
                     "label_smoothing"):
            _check_number(name, getattr(self, name), 0.0)
        if self.label_smoothing >= 1.0:
            _fail("label_smoothing", "must be below 1", self.label_smoothing)
        if self.workers is not None:
            _check_int("workers", self.workers, 0)
        if self.val_size is not None:
            _check_int("val_size", self.val_size, 0)
        if self.train_subset is not None:
            _check_int("train_subset", self.train_subset, 1)
        from toolkit.optim import parse_betas
        try:  # canonical text, so that a resume compares values rather than spellings
            self.betas = ",".join(f"{b:g}" for b in parse_betas(self.betas))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _check_number("lr", self.lr, 0.0, strict=True)
        if self.image_size is not None:
            _check_int("image_size", self.image_size, 1)
        if not (self.tensorboard is None or isinstance(self.tensorboard, bool)):
            _fail("tensorboard", "must be true, false or null (on when available)",
                  self.tensorboard)
        if self.tensorboard:
            import importlib.util
            if importlib.util.find_spec("tensorboard") is None:
                raise ConfigError("--tensorboard needs the tensorboard package (pip install "
                                  "tensorboard, or scripts/install.sh); --no-tensorboard "
                                  "turns it off")
        self._check_layer_options()
        return self

    def _check_layer_options(self):
        """The --inv-* options are checked where they are defined: by building the layer's
        LayerOptions (each value, and combinations such as freeze with a refresh every k > 1
        steps); with another --norm a changed --inv-* option would do nothing."""
        try:
            self.layer_options().for_norm(self.norm)
        except LayerOptionError as exc:
            if exc.option is None:
                raise ConfigError(f"--inv-* options: {exc.problem}") from None
            raise ConfigError(f"--inv-{exc.option.replace('_', '-')} {exc.problem}") from None

    # ---- what other parts read --------------------------------------------------------------

    def layer_options(self):
        """The options of every invariance layer, a checked LayerOptions built from the
        --inv-* options (models.build_model(layer_options=...) uses it as it is)."""
        return LayerOptions(**{spec.name[len("inv_"):]: getattr(self, spec.name)
                               for spec in fields(self) if spec.name.startswith("inv_")})

    def data_options(self):
        """The loader's options that were given (a data set without them refuses them)."""
        given = {"image_size": self.image_size, "val_size": self.val_size,
                 "train_subset": self.train_subset}
        return {key: value for key, value in given.items() if value is not None}

    def resume_keys(self):
        """The options a checkpoint must share with this run (the layer's only with inv)."""
        keys = list(RESUME_KEYS)
        if self.norm == "inv":
            keys += [spec.name for spec in fields(self) if spec.name.startswith("inv_")]
        return {key: getattr(self, key) for key in keys}

    def to_dict(self):
        return asdict(self)


def _fail(name, problem, value):
    raise ConfigError(f"--{name.replace('_', '-')} {problem}, got {value!r}")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(name, f"must be an integer >= {minimum}", value)


def _check_number(name, value, minimum, strict=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        _fail(name, f"must be a finite number {'>' if strict else '>='} {minimum:g}", value)


# ---- command line ---------------------------------------------------------------------------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those options explain their fallback themselves)."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        if isinstance(action, OnOff):
            return f"{action.option_strings[0]} [on|off], {', '.join(action.option_strings[1:])}"
        return super()._format_action_invocation(action)


ON_OFF = {"on": True, "true": True, "yes": True, "1": True,
          "off": False, "false": False, "no": False, "0": False}


class OnOff(argparse.Action):
    """A boolean option: --x or --x on sets it, --x off or --no-x clears it (true/false,
    yes/no and 1/0 are taken too)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        negatives = ["--no-" + s[2:] for s in option_strings if s.startswith("--")]
        super().__init__(option_strings + negatives, dest, nargs="?", default=default,
                         help=help, metavar="on|off")
        self.negatives = negatives

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string in self.negatives:
            if value is not None:
                raise argparse.ArgumentError(self, f"{option_string} takes no value, got "
                                                   f"{value!r}")
            setattr(namespace, self.dest, False)
        elif value is None:
            setattr(namespace, self.dest, True)
        elif value.lower() in ON_OFF:
            setattr(namespace, self.dest, ON_OFF[value.lower()])
        else:
            raise argparse.ArgumentError(self, f"expected on or off, got {value!r}")


def _flag_type(spec):
    if spec.metadata["type"] is not None:
        return spec.metadata["type"]
    default_type = {"int": int, "float": float, "str": str}.get(
        spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", ""))
    return default_type or str


def _flag(spec):
    return spec.metadata["flag"] or "--" + spec.name.replace("_", "-")


def _flag_kwargs(spec, default):
    """add_argument's keywords for a RunConfig field (help and choices read from their
    registries now)."""
    meta = spec.metadata
    kwargs = {"default": default, "help": _resolve(meta["help"]), "dest": spec.name}
    if spec.type in (bool, "bool"):
        kwargs["action"] = OnOff
    else:
        kwargs["type"] = _flag_type(spec)
        for key in ("choices", "metavar", "nargs", "const"):
            if key == "choices" and not meta["parser_choices"]:
                continue
            value = _resolve(meta[key])
            if value is not None:
                kwargs[key] = value
    return kwargs


def add_options(parser):
    """One flag per RunConfig field, grouped as in --help; booleans are --x [on|off] /
    --no-x."""
    groups = {}
    for spec in fields(RunConfig):
        group = groups.get(spec.metadata["group"]) or groups.setdefault(
            spec.metadata["group"], parser.add_argument_group(spec.metadata["group"]))
        group.add_argument(_flag(spec), **_flag_kwargs(spec, spec.default))


def add_run_options(parser, names, *, defaults=None, flags=None, notes=None):
    """Adds the RunConfig options `names` to another command line's parser (a benchmark's,
    a study's), with launch.train's type, choices and help, so that an option that means the
    same thing is given, parsed and checked the same way everywhere.

    defaults: {name: value} where the command line has its own default (shown in --help);
    flags: {name: ("--flag", ...)} where it keeps its own spelling (the dest stays the
    field's name); notes: {name: text} appended to the help, what the option does there.
    Check the values after parsing with check_run_options. Returns `names`."""
    specs = {spec.name: spec for spec in fields(RunConfig)}
    defaults, flags, notes = defaults or {}, flags or {}, notes or {}
    unknown = sorted(set(names) - set(specs))
    if unknown:
        raise ValueError(f"not RunConfig options: {', '.join(unknown)}")
    shows_defaults = isinstance(parser.formatter_class, type) and issubclass(
        parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for name in names:
        spec = specs[name]
        kwargs = _flag_kwargs(spec, defaults.get(name, spec.default))
        if notes.get(name):
            kwargs["help"] += "; " + notes[name]
        if not shows_defaults and kwargs["default"] is not None and "type" in kwargs:
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(*flags.get(name, (_flag(spec),)), **kwargs)
    return tuple(names)


def check_run_options(parser, namespace, names):
    """The values of the options add_run_options added, checked as launch.train checks them
    (RunConfig.validate with the other options at their defaults; a None value, a command
    line's "none given", is left out); a bad one ends in parser.error (exit 2, one line)."""
    given = {name: getattr(namespace, name) for name in names
             if getattr(namespace, name) is not None}
    try:
        RunConfig(**given).validate()
    except ConfigError as exc:
        parser.error(str(exc))


def load_config_file(path):
    """The options saved in a run's config.json (run facts and run-specific ones dropped)."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path} cannot be read as JSON: {exc}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of options")
    known = {spec.name for spec in fields(RunConfig)}
    unknown = sorted(set(saved) - known - set(RUN_FACTS) - set(NOT_LOADED))
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    return {k: v for k, v in saved.items() if k in known and k not in NOT_LOADED}


def from_namespace(namespace):
    return RunConfig(**{spec.name: getattr(namespace, spec.name) for spec in fields(RunConfig)})


def parse(parser, argv=None):
    """RunConfig from the command line: defaults < --config FILE < flags; validated."""
    namespace = parser.parse_args(argv)
    if namespace.config:
        parser.set_defaults(**load_config_file(namespace.config))
        namespace = parser.parse_args(argv)
    return from_namespace(namespace).validate()

