"""Layer benchmark: ResNet-18 (CIFAR, 32x32) training step with BatchNorm, with the
invariance layer (C++ ops) and with the pure-PyTorch reference layer (same math).

    python -m launch.bench_layer --json runs/bench_layer.json [--batch 128 --threads 2]

Prints the step times, the ratios inv_over_bn and ref_over_inv (targets: <= 1.5 and >= 2.0),
and a per-layer table (forward, backward, share of statistics / inverse sqrt / conv / fold).
Only ratios measured within one run mean anything on a shared machine.
"""
import argparse
import copy
import json
import os
import platform
import sys

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--model", default="resnet18_cifar")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--no-table", action="store_true", help="skip the per-layer table")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("batch", "threads", "steps", "image_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from models import build_model
    from tests.invariance_reference import to_reference
    from toolkit.bench.layer import (floor_estimate, format_table, layer_table, make_batch,
                                     step_times)

    kw = dict(num_classes=10, in_channels=3, image_size=args.image_size)
    inv = build_model(args.model, norm="inv", **kw)
    nets = {"bn": build_model(args.model, norm="bn", **kw), "inv": inv,
            "ref": to_reference(copy.deepcopy(inv))}
    x, y = make_batch(args.batch, args.image_size, seed=args.seed)
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, {args.steps} timed "
          f"steps per model (interleaved, median)", flush=True)
    medians, samples = step_times(nets, x, y, steps=args.steps, warmup=args.warmup)
    result = dict(model=args.model, batch=args.batch, threads=args.threads, steps=args.steps,
                  bn_step_s=medians["bn"], inv_step_s=medians["inv"], ref_step_s=medians["ref"],
                  inv_over_bn=medians["inv"] / medians["bn"],
                  ref_over_inv=medians["ref"] / medians["inv"], samples_s=samples,
                  torch=torch.__version__, host=platform.node(), python=sys.version.split()[0])
    print(f"step (s): bn {medians['bn']:.3f}  inv {medians['inv']:.3f}  ref {medians['ref']:.3f}")
    print(f"inv_over_bn = {result['inv_over_bn']:.2f} (target <= 1.5)   "
          f"ref_over_inv = {result['ref_over_inv']:.2f} (target >= 2.0)", flush=True)
    if not args.no_table:
        rows = layer_table(inv, x)
        result["layers"] = rows
        print(format_table(rows))
        floor_rows, floor_s = floor_estimate(inv, x, medians["bn"])
        result.update(floor_layers=floor_rows, floor_inv_step_s=floor_s,
                      floor_inv_over_bn=floor_s / medians["bn"])
        totals = {k: sum(r[k] for r in floor_rows) for k in floor_rows[0] if k != "layer"}
        print("unavoidable products summed over the layers (ms): " +
              "  ".join(f"{k[:-3]} {v:.0f}" for k, v in totals.items()))
        print(f"floor: BN step - BatchNorm + those products = {floor_s:.3f} s, i.e. "
              f"inv_over_bn >= {result['floor_inv_over_bn']:.2f} while the method's dense "
              f"products run as they do here (BLAS GEMMs, LAPACK eigh)", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
