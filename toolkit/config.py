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
import math
from dataclasses import asdict, dataclass, field, fields

from toolkit.invariance.options import METHODS, REFRESH_RULES, LayerOptionError, LayerOptions

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
    inv_refresh: str = option(LayerOptions.refresh, "what the steps between refreshes fold "
                              "(--inv-stats-every > 1 or --inv-freeze): ema (the running "
                              "averages), last (the last refresh's statistics), center (the "
                              "running whitening with the batch mean), batch (the batch's statistics, "
                              "no gradient through them), sampled (the batch's statistics "
                              "from 4x fewer rows, with their gradient)", LAYER, choices=REFRESH_RULES)
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


# The command line lives in config_cli (one module per job); its names stay reachable here.
from toolkit.config_cli import (ON_OFF, OnOff, _flag, _flag_kwargs, _flag_type,  # noqa: E402,F401
                                _HelpFormatter, add_options, add_run_options,
                                check_run_options, from_namespace, load_config_file, parse)
