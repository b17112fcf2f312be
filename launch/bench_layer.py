"""Layer benchmark: ResNet-18 (CIFAR, 32x32) training step with BatchNorm, with the
invariance layer (C++ ops) refreshing its statistics on every step (k = 1) and on every 10th
(k = 10, timed over whole periods), and with the pure-PyTorch reference layer (same math).

    python -m launch.bench_layer --json runs/bench_layer.json [--batch 128 --threads 2]

--model, --batch (= --batch-size), --threads, --image-size and --seed are launch.train's
options (same types, choices and checks), with this benchmark's defaults.

Prints the step times and the ratios inv_over_bn (k = 1), inv_over_bn_k10 (target <= 1.25),
inv_fast_over_bn (k = 10 with refresh FAST_RULE below, target <= 1.20; every rule's ratio on
ResNet-18 and vit_tiny in refresh_over_bn), inv_over_floor (k = 1 step over the measured floor, target <= 1.10) and ref_over_inv
(target >= 2.0), and a per-layer table (forward, backward, share of statistics / inverse
sqrt / conv / fold).  Only ratios measured within one run mean anything on a shared machine.

Every step trains on a fresh random batch at lr 1e-3 (experiments/bench/layer.py says why),
and each model's loss at its first and last timed step goes into the JSON: a loss that is
not finite or grows more than 2x ends the benchmark with one line and exit 3 instead of a
step time of a diverging model.
"""
import argparse
import copy
import json
import os
import platform
import sys

import torch

from experiments.bench.layer import LR, DivergedWhileTimed
from experiments.provenance import provenance, start
from toolkit import config

TARGETS = {"inv_over_bn_k10": ("<=", 1.25), "inv_fast_over_bn": ("<=", 1.20),
           "inv_over_floor": ("<=", 1.10), "ref_over_inv": (">=", 2.0)}
PERIOD = 10
# The refresh rules timed beside "ema" (inv_k10), each as inv_k10_<rule> with k = PERIOD,
# and the one whose ratio is inv_fast_over_bn (docs/invariance-layer.md, "Refresh rules").
RULES = ("last", "center", "batch", "sampled")
FAST_RULE = "center"
# Also timed on vit_tiny (steps only: no floor, table or reference), at its own batch.
SECOND_MODEL = "vit_tiny"
# Distinct random batches the timed steps cycle through (experiments/bench/layer.py: LR).
BATCHES = 16


# launch.train's options, as launch.train parses and checks them (this benchmark's defaults)
RUN_OPTIONS = ("model", "batch_size", "threads", "image_size", "seed")


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.bench_layer",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results to this JSON file")
    config.add_run_options(
        p, RUN_OPTIONS, defaults={"model": "resnet18_cifar", "batch_size": 128, "threads": 2,
                                  "image_size": 32},
        flags={"batch_size": ("--batch", "--batch-size")},
        notes={"image_size": "here the side of the random input images"})
    p.add_argument("--steps", type=int, default=5,
                   help="interleaved rounds (median); k = 10 runs a whole period per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-table", action="store_true", help="skip the per-layer table")
    p.add_argument("--rules", nargs="*", choices=RULES, default=list(RULES),
                   help=f"refresh rules timed with k = {PERIOD} besides ema; "
                        f"{FAST_RULE} gives inv_fast_over_bn")
    p.add_argument("--vit-batch", type=int, default=32,
                   help=f"batch of the {SECOND_MODEL} steps (0: skip {SECOND_MODEL})")
    p.add_argument("--device", default="cpu",
                   help="cpu, or cuda (timed with CUDA events; without the CPU analyses: "
                        "floor and per-layer table)")
    return p


def parse_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    config.check_run_options(p, args, RUN_OPTIONS)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.vit_batch < 0:
        p.error("--vit-batch must be >= 0")
    if args.threads == 0:  # as in launch.train: $OMP_NUM_THREADS, else the usable cores
        from toolkit.train import default_threads
        args.threads = default_threads(1)
    return args


def build_models(args, model=None, reference=True):
    """bn, inv (k = 1), inv_k10 and inv_k10_<rule> (same weights, past their warm start)
    and ref (same weights)."""
    from models import build_model
    from tests.invariance_reference import to_reference
    from experiments.bench.layer import past_warm_start
    model = model or args.model
    kw = dict(num_classes=10, in_channels=3, image_size=args.image_size)
    inv = build_model(model, norm="inv", **kw)
    nets = {"bn": build_model(model, norm="bn", **kw), "inv": inv}
    for rule in ("ema", *args.rules):
        amortized = build_model(model, norm="inv", layer_options={
            "stats_every": PERIOD, "refresh": rule}, **kw)
        amortized.load_state_dict(inv.state_dict(), strict=False)  # no refresh_* in inv
        nets["inv_k10" if rule == "ema" else f"inv_k10_{rule}"] = past_warm_start(amortized)
    if reference:
        nets["ref"] = to_reference(copy.deepcopy(inv))
    return nets


def periods(nets):
    return {name: PERIOD for name in nets if name.startswith("inv_k10")}


def rule_ratios(medians, rules):
    """{rule: step over the BN step} for ema (inv_k10) and the timed rules."""
    out = {"ema": medians["inv_k10"] / medians["bn"]}
    out.update({rule: medians[f"inv_k10_{rule}"] / medians["bn"] for rule in rules})
    return out


def second_model(args):
    """The step ratios of SECOND_MODEL (bn, k = 1, every rule with k = PERIOD)."""
    from experiments.bench.layer import make_batches, step_times
    nets = build_models(args, SECOND_MODEL, reference=False)
    batches = make_batches(BATCHES, args.vit_batch, args.image_size, seed=args.seed)
    print(f"{SECOND_MODEL}, batch {args.vit_batch}", flush=True)
    medians, samples, losses = step_times(nets, batches, steps=args.steps,
                                          warmup=args.warmup, periods=periods(nets))
    return dict(batch=args.vit_batch, step_s=medians, samples_s=samples,
                loss_first_last=losses, inv_over_bn=medians["inv"] / medians["bn"],
                refresh_over_bn=rule_ratios(medians, args.rules))


def verdict(name, value):
    sign, target = TARGETS[name]
    met = value <= target if sign == "<=" else value >= target
    return f"{name} = {value:.3f} (target {sign} {target}: {'met' if met else 'NOT met'})"


def main(argv=None):
    started = start()
    args = parse_args(argv)
    from experiments.bench.device import benchmark_device
    device = benchmark_device(args.device, needs_cuda_kernels=True)
    if device.type == "cuda":
        return cuda_main(args, device, argv, started)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from experiments.bench.layer import (floor_estimate, format_table, layer_table,
                                         make_batches, step_times)

    nets = build_models(args)
    batches = make_batches(BATCHES, args.batch_size, args.image_size, seed=args.seed)
    x = batches[0][0]
    print(f"{args.model}, batch {args.batch_size}, {args.threads} threads, {args.steps} "
          f"interleaved rounds (median; k = {PERIOD}: the mean of one whole period per round)",
          flush=True)
    medians, samples, losses = step_times(nets, batches, steps=args.steps,
                                          warmup=args.warmup, periods=periods(nets))
    floor_rows, floor_s = floor_estimate(nets["inv"], x, medians["bn"])
    by_rule = {rule: {args.model: ratio} for rule, ratio in
               rule_ratios(medians, args.rules).items()}
    result = dict(model=args.model, batch=args.batch_size, threads=args.threads,
                  steps=args.steps,
                  bn_step_s=medians["bn"], inv_step_s=medians["inv"],
                  inv_k10_step_s=medians["inv_k10"], ref_step_s=medians["ref"],
                  floor_inv_step_s=floor_s,
                  inv_over_bn=medians["inv"] / medians["bn"],
                  inv_over_bn_k10=medians["inv_k10"] / medians["bn"],
                  inv_over_floor=medians["inv"] / floor_s,
                  floor_inv_over_bn=floor_s / medians["bn"],
                  ref_over_inv=medians["ref"] / medians["inv"], samples_s=samples,
                  step_s=medians, loss_first_last=losses, lr=LR, fresh_batches=BATCHES,
                  floor_layers=floor_rows, torch=torch.__version__, host=platform.node(),
                  python=sys.version.split()[0])
    if FAST_RULE in args.rules:
        result["inv_fast_rule"] = FAST_RULE
        result["inv_fast_over_bn"] = by_rule[FAST_RULE][args.model]
    if args.vit_batch:
        result[SECOND_MODEL] = second_model(args)
        for rule, ratio in result[SECOND_MODEL]["refresh_over_bn"].items():
            by_rule[rule][SECOND_MODEL] = ratio
    result["refresh_over_bn"] = by_rule
    print("step / BN step with k = %d, by refresh rule: " % PERIOD + "  ".join(
        f"{rule} " + "/".join(f"{v:.3f}" for v in models.values())
        for rule, models in by_rule.items()) + f"  ({', '.join(next(iter(by_rule.values())))})")
    print(f"step (s): bn {medians['bn']:.3f}  inv {medians['inv']:.3f}  inv k={PERIOD} "
          f"{medians['inv_k10']:.3f}  ref {medians['ref']:.3f}  floor {floor_s:.3f}")
    totals = {k: sum(r[k] for r in floor_rows) for k in floor_rows[0] if k != "layer"}
    print("floor = BN step - BatchNorm + the method's dense products (ms, summed over the "
          "layers: " + "  ".join(f"{k[:-3]} {v:.0f}" for k, v in totals.items()) + ")")
    print(f"inv_over_bn = {result['inv_over_bn']:.3f}  floor_inv_over_bn = "
          f"{result['floor_inv_over_bn']:.3f}")
    for name in TARGETS:
        if name in result:
            print(verdict(name, result[name]), flush=True)
    if not args.no_table:
        rows = layer_table(nets["inv"], x)
        result["layers"] = rows
        print(format_table(rows))
    if args.json:
        result["provenance"] = provenance(argv, started, threads=args.threads,
                                          module="launch.bench_layer")
        write_result(args.json, result)
    return result


def write_result(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


def cuda_main(args, device, argv=None, started=None):
    """The step times and their ratios on a GPU (the floor and the per-layer table measure
    BLAS, LAPACK and the CPU profiler, so they stay CPU analyses)."""
    from experiments.bench.layer import make_batches, step_times
    torch.manual_seed(args.seed)
    nets = {name: net.to(device) for name, net in build_models(args).items()}
    batches = [(x.to(device), y.to(device)) for x, y in
               make_batches(BATCHES, args.batch_size, args.image_size, seed=args.seed)]
    print(f"{args.model}, batch {args.batch_size}, {torch.cuda.get_device_name(device)}, "
          f"{args.steps} interleaved rounds (median, CUDA events)", flush=True)
    medians, samples, losses = step_times(nets, batches, steps=args.steps,
                                          warmup=args.warmup, periods=periods(nets))
    result = dict(model=args.model, batch=args.batch_size, steps=args.steps, device=str(device),
                  loss_first_last=losses, lr=LR, fresh_batches=BATCHES,
                  gpu=torch.cuda.get_device_name(device), bn_step_s=medians["bn"],
                  inv_step_s=medians["inv"], inv_k10_step_s=medians["inv_k10"],
                  ref_step_s=medians["ref"], inv_over_bn=medians["inv"] / medians["bn"],
                  inv_over_bn_k10=medians["inv_k10"] / medians["bn"],
                  ref_over_inv=medians["ref"] / medians["inv"], samples_s=samples,
                  refresh_over_bn=rule_ratios(medians, args.rules),
                  torch=torch.__version__, host=platform.node())
    print(f"step (s): bn {medians['bn']:.4f}  inv {medians['inv']:.4f}  inv k={PERIOD} "
          f"{medians['inv_k10']:.4f}  ref {medians['ref']:.4f}")
    for name in ("inv_over_bn_k10", "ref_over_inv"):
        print(verdict(name, result[name]), flush=True)
    if args.json:
        result["provenance"] = provenance(argv, started or start(), threads=args.threads,
                                          module="launch.bench_layer")
        write_result(args.json, result)
    return result


if __name__ == "__main__":
    try:
        main()
    except DivergedWhileTimed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(3)
