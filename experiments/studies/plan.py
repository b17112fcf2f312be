"""The claims study's plan: the training configurations, the size of each run, the claims
(families L1, L2, L3, D1, S) and the paired comparisons that decide them.

A Config is one `python -m launch.train` configuration without its seed; a run is a
(Config, seed). A comparison is a contrast of configurations, evaluated per seed:
sum(coefficient * metric(config, seed)); its kind says how its interval is judged
(experiments/studies/verdicts.py). The families name every configuration they show, so
runs shared by several families (L2 and S reuse L1's) are trained once.
"""
from dataclasses import asdict, dataclass, field

DATASET = "fashion_mnist"
CLASSES = 10

# vit_tiny (inv) on 28 px Fashion-MNIST, one thread: images/s of training from the k = 1
# run of docs/results/refresh_rules.json (a loaded machine: an upper bound of the time), and
# seconds of one evaluation (val + test images) taking a forward pass at three times that.
VIT_IMAGES_PER_S = 20
VIT_EVAL_S = 200.0
# The refresh rule the R family checks (--inv-refresh; docs/results/refresh_rules.md).
REFRESH_RULE = "center"

# The size of every run (docs/results/README.md says why these values): training images
# (the first N of the training file outside the validation part), epochs, the validation
# part, and evaluations (val + test) per run besides the epoch ends. Multi-rank runs (D1)
# take "multi_rank"'s values.
SCALE = {
    "val_size": 2000,
    "evals": 12,
    "models": {"small_cnn": {"train_subset": 20480, "epochs": 3},
               "resnet20": {"train_subset": 5120, "epochs": 2, "evals": 8},
               "vit_tiny": {"train_subset": 5120, "epochs": 2, "evals": 2}},
    "multi_rank": {"train_subset": 10240, "epochs": 2, "evals": 8},
}

# Seconds measured on the 2-core test machine, one thread per process, two processes side
# by side: for --dry-run's estimate and the progress lines (they rescale it by the runs
# finished so far).
COST = {
    "start_s": 8.0,  # interpreter, torch, the data, the final plot
    "rank_start_s": 3.5,  # more per rank of an mpirun job (all ranks start on 2 cores)
    "images_per_s": {("small_cnn", "inv"): 1330, ("small_cnn", "bn"): 3600,
                     ("small_cnn", "none"): 4000, ("resnet20", "inv"): 69,
                     ("resnet20", "bn"): 410, ("resnet20", "none"): 480,
                     ("vit_tiny", "inv"): VIT_IMAGES_PER_S},
    # one evaluation: val + test images
    "eval_s": {"small_cnn": 1.5, "resnet20": 9.0, "vit_tiny": VIT_EVAL_S},
    # images/s of an N-rank job on 2 cores, as a fraction of one single-process run's
    "rank_speed": {2: 0.75, 4: 0.7, 8: 0.6, 16: 0.5},
}


@dataclass(frozen=True)
class Config:
    """stats_every and refresh: the invariance layer's --inv-stats-every / --inv-refresh."""
    model: str = "small_cnn"
    norm: str = "inv"
    lr: float = 0.1
    batch: int = 32  # per rank
    ranks: int = 1
    strategy: str = "none"
    delay: int = 1
    period: int = 1
    stats_every: int = 1
    warmup_epochs: float = 0.0
    lr_scaling: str = "none"
    refresh: str = "ema"

    def name(self):
        """Directory name of its runs (without the seed); only what differs from defaults."""
        parts = [self.model, self.norm, f"lr{self.lr:g}", f"b{self.batch}"]
        if self.ranks > 1:
            parts += [f"np{self.ranks}", self.strategy]
            if self.strategy == "dasgd":
                parts.append(f"d{self.delay}")
            if self.strategy in ("dasgd", "local") and self.period != 1:
                parts.append(f"H{self.period}")
        if self.stats_every != 1:
            parts.append(f"k{self.stats_every}")
        if self.refresh != "ema":
            parts.append(self.refresh)
        if self.warmup_epochs:
            parts.append(f"wu{self.warmup_epochs:g}")
        if self.lr_scaling != "none":
            parts.append(f"scale-{self.lr_scaling}")
        return "_".join(parts)

    def label(self):
        """Short human label: norm, lr and whatever else sets it apart."""
        text = f"{self.norm} @ lr {self.lr:g}"
        if self.ranks > 1:
            text = {"sync": "sync", "local": f"local H={self.period}",
                    "dasgd": f"dasgd d={self.delay}" + (f" H={self.period}"
                                                       if self.period != 1 else "")
                    }.get(self.strategy, self.strategy) + f", {self.ranks} ranks"
        if self.batch != 32 and self.ranks == 1:
            text += f", batch {self.batch}"
        if self.stats_every != 1:
            text += f", k={self.stats_every}"
        if self.refresh != "ema":
            text += f" {self.refresh}"
        return text

    def as_dict(self):
        return asdict(self)


def size_of(config, scale=SCALE):
    """(train_subset, epochs, total steps, eval interval) of a configuration's runs. The
    interval divides the epoch where it can, so that no evaluation falls a step or two
    before an epoch end's (which launch.train evaluates anyway)."""
    size = {"evals": scale["evals"], **scale["models"][config.model]}
    if config.ranks > 1:
        size.update(scale.get("multi_rank", {}))
    per_epoch = size["train_subset"] // (config.batch * config.ranks)
    total = per_epoch * size["epochs"]
    target = max(1, total // size["evals"])
    divisor = max((d for d in range(1, per_epoch + 1) if per_epoch % d == 0 and d <= target),
                  default=1)
    interval = divisor if 2 * divisor >= target else target
    return size["train_subset"], size["epochs"], total, interval


def estimate_s(config, scale=SCALE, cost=COST):
    """Expected seconds of one run (COST's machine)."""
    subset, epochs, total, interval = size_of(config, scale)
    speed = cost["images_per_s"][config.model, config.norm]
    start = cost["start_s"]
    if config.ranks > 1:
        speed *= cost["rank_speed"].get(config.ranks, min(cost["rank_speed"].values()))
        start += cost["rank_start_s"] * config.ranks
    evals = total // interval + (epochs if (total // epochs) % interval else 0)
    return start + total * config.batch * config.ranks / speed + \
        evals * cost["eval_s"][config.model]


def train_args(config, seed, scale=SCALE, data_dir=None):
    """launch.train's options of one run (--out is the runner's)."""
    subset, epochs, _, interval = size_of(config, scale)
    args = ["--dataset", scale.get("dataset", DATASET), "--train-subset", subset,
            "--val-size", scale["val_size"], "--model", config.model, "--norm", config.norm,
            "--epochs", epochs, "--batch-size", config.batch, "--lr", config.lr,
            "--lr-scaling", config.lr_scaling, "--strategy", config.strategy,
            "--seed", seed, "--threads", 1, "--workers", 0, "--eval-interval", interval,
            "--progress", "never", "--keep", 1]
    if config.strategy in ("dasgd", "local"):
        args += ["--period", config.period]
    if config.strategy == "dasgd":
        args += ["--delay", config.delay]
    if config.stats_every != 1:
        args += ["--inv-stats-every", config.stats_every]
    if config.refresh != "ema":
        args += ["--inv-refresh", config.refresh]
    if config.warmup_epochs:
        args += ["--warmup-epochs", config.warmup_epochs]
    if data_dir:
        args += ["--data-dir", data_dir]
    return [str(a) for a in args]


@dataclass
class Comparison:
    """One claim decided by a verdict. terms: (coefficient, Config); metric: "final_test"
    (test accuracy at the end, points) or "steps_ratio" (steps of terms[0] to reach the
    final validation accuracy of terms[1]'s run of the same seed, over terms[1]'s steps);
    kind: superiority (side +1: the contrast is positive, -1: negative) or equivalence."""
    id: str
    text: str
    terms: list
    kind: str = "superiority"
    metric: str = "final_test"
    side: int = +1


@dataclass
class Family:
    id: str
    title: str
    configs: list  # every configuration the family shows
    comparisons: list
    panels: list = field(default_factory=list)  # (title, [Config]) of the plot
    notes: str = ""


def _vs(a, b):
    return [(+1, a), (-1, b)]


def l1(models=("small_cnn", "resnet20")):
    configs, comparisons, panels = [], [], []
    for m in models:
        cs = {(n, lr): Config(model=m, norm=n, lr=lr) for n in ("inv", "bn", "none")
              for lr in (0.1, 1.0)}
        configs += cs.values()
        panels.append((m, list(cs.values())))
        comparisons += [
            Comparison(f"L1.{m}.inv1-bn1", f"{m}: inv @ lr 1.0 ends with a higher test "
                       "accuracy than bn @ lr 1.0", _vs(cs["inv", 1.0], cs["bn", 1.0])),
            Comparison(f"L1.{m}.inv1-bn0.1", f"{m}: inv @ lr 1.0 ends with a higher test "
                       "accuracy than bn @ lr 0.1 (BatchNorm at its usual lr)",
                       _vs(cs["inv", 1.0], cs["bn", 0.1]))]
    return Family("L1", "Training at learning rate 1.0", configs, comparisons, panels,
                  "none (no normalisation) is shown for context; it is in no comparison.")


def l2(models=("small_cnn", "resnet20")):
    configs, comparisons, panels = [], [], []
    for m in models:
        bn, inv1, inv01 = (Config(model=m, norm="bn", lr=0.1), Config(model=m, lr=1.0),
                           Config(model=m, lr=0.1))
        configs += [inv1, inv01, bn]
        panels.append((m, [inv1, inv01, bn]))
        for inv in (inv1, inv01):
            comparisons.append(Comparison(
                f"L2.{m}.inv{inv.lr:g}-bn0.1", f"{m}: inv @ lr {inv.lr:g} reaches the final "
                "validation accuracy of bn @ lr 0.1 in fewer steps than BatchNorm trained",
                _vs(inv, bn), metric="steps_ratio", side=-1))
    return Family("L2", "Fewer iterations to BatchNorm's accuracy", configs, comparisons,
                  panels, "Same runs as L1. Ratio = steps of inv to first reach the final "
                  "validation accuracy of the BatchNorm run of the same seed / steps of that "
                  "BatchNorm run; the interval is taken on ln(ratio) and shown as a ratio.")


def l3(base_lr=0.1, batches=(32, 1024), warmup_epochs=1.0):
    cs = {(n, b): Config(norm=n, batch=b, lr=base_lr * b / 128, warmup_epochs=warmup_epochs)
          for n in ("inv", "bn") for b in batches}
    small, large = batches
    comparisons = [
        Comparison(f"L3.b{large}", f"at batch {large}, inv ends with a higher test accuracy "
                   "than bn", _vs(cs["inv", large], cs["bn", large])),
        Comparison(f"L3.b{small}", f"at batch {small}, inv ends with a higher test accuracy "
                   "than bn", _vs(cs["inv", small], cs["bn", small])),
        Comparison(f"L3.drop", f"going from batch {small} to {large}, inv loses less test "
                   "accuracy than bn", [(+1, cs["inv", large]), (-1, cs["inv", small]),
                                        (-1, cs["bn", large]), (+1, cs["bn", small])])]
    return Family("L3", "Small and large batches", list(cs.values()), comparisons,
                  [(f"batch {b}", [cs["inv", b], cs["bn", b]]) for b in batches],
                  f"small_cnn, lr = {base_lr:g} x batch / 128 (--lr-scaling none), linear "
                  f"warm-up over {warmup_epochs:g} epoch(s) from 0, same epochs for both "
                  "batch sizes.")


def d1(ranks=(2, 4, 8, 16), lr=0.05, norm="inv", warmup_epochs=1.0):
    configs, comparisons, panels = [], [], []
    for n in ranks:
        common = dict(norm=norm, lr=lr, ranks=n, lr_scaling="linear",
                      warmup_epochs=warmup_epochs)
        sync = Config(strategy="sync", **common)
        others = [Config(strategy="dasgd", delay=d, **common) for d in (1, 2, 4)] + \
            [Config(strategy="local", period=4, **common)]
        configs += [sync, *others]
        panels.append((f"{n} ranks", [sync, *others]))
        comparisons += [Comparison(f"D1.np{n}.{short(c)}",
                                   f"{n} ranks: {c.label().split(',')[0]} ends within "
                                   "0.5 points of sync's test accuracy", _vs(c, sync),
                                   kind="equivalence") for c in others]
    return Family("D1", "DaSGD converges like synchronous SGD", configs, comparisons, panels,
                  f"small_cnn, norm {norm}, batch 32 per rank, lr {lr:g} per worker scaled "
                  f"linearly with the ranks, warm-up {warmup_epochs:g} epoch(s), same epochs "
                  "at every rank count (so more ranks take fewer steps); ranks beyond the "
                  "cores are oversubscribed. Steps to target: first evaluation reaching the "
                  "final validation accuracy of sync (same seed) minus 1 point.")


def short(config):
    """dasgd-d2, local-H4, sync."""
    if config.strategy == "dasgd":
        return f"dasgd-d{config.delay}" + (f"-H{config.period}" if config.period != 1 else "")
    return f"local-H{config.period}" if config.strategy == "local" else config.strategy


def stale_stats(ks=(1, 10, 50), lrs=(0.1, 1.0)):
    configs, comparisons, panels = [], [], []
    for lr in lrs:
        cs = [Config(lr=lr, stats_every=k) for k in ks]
        configs += cs
        panels.append((f"lr {lr:g}", cs))
        comparisons += [Comparison(f"S.lr{lr:g}.k{c.stats_every}", f"lr {lr:g}: statistics "
                                   f"every {c.stats_every} steps end within 0.5 points of "
                                   "every step", _vs(c, cs[0]), kind="equivalence")
                        for c in cs[1:]]
    return Family("S", "Stale statistics (--inv-stats-every)", configs, comparisons, panels,
                  "small_cnn, norm inv, batch 32; k = 1 runs are L1's.")


def refresh_rule(rule=REFRESH_RULE, k=10, cases=(("small_cnn", 0.1), ("small_cnn", 1.0),
                                                 ("vit_tiny", 0.1))):
    """The refresh rule with statistics every k steps is no worse than every step."""
    configs, comparisons, panels = [], [], []
    for model, lr in cases:
        every, rule_k = Config(model=model, lr=lr), Config(model=model, lr=lr, stats_every=k,
                                                           refresh=rule)
        configs += [every, rule_k]
        panels.append((f"{model} lr {lr:g}", [every, rule_k]))
        comparisons.append(Comparison(
            f"R.{model}.lr{lr:g}", f"{model} lr {lr:g}: --inv-refresh {rule} with statistics "
            f"every {k} steps ends no more than 0.5 points below every step",
            _vs(rule_k, every), kind="noninferiority"))
    return Family("R", f"A refresh rule that holds (--inv-refresh {rule})", configs,
                  comparisons, panels, "norm inv, batch 32; small_cnn k = 1 runs are L1's.")


FAMILIES = {"L1": l1, "L2": l2, "L3": l3, "D1": d1, "S": stale_stats, "R": refresh_rule}


def families(only=None, params=None):
    """The families named in `only` (default all); params: {family: keyword arguments of
    its function}, e.g. {"S": {"lrs": [1.0]}} (a --scale file's "families")."""
    params = params or {}
    names = list(FAMILIES) if not only else only
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"--only: unknown claim(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(FAMILIES)}")
    return [FAMILIES[n](**params.get(n, {})) for n in names]


def runs_of(fams, seeds):
    """Every (Config, seed) the families need, once each: seed by seed (an interrupted study
    has every configuration at the first seeds), single-process runs before multi-rank ones."""
    configs = list(dict.fromkeys(c for f in fams for c in f.configs))
    order = sorted(configs, key=lambda c: c.ranks > 1)
    return [(c, s) for s in seeds for c in order]
