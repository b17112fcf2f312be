"""Input benchmark: images/s of the ImageFolder training pipeline (JPEG decoding, random
resized crop, flip, normalisation, batching) with 0, 1, 2 loader workers, next to the
rate at which a model's training step consumes images, and whether training would be
input-bound.

    python -m launch.bench_data --json docs/results/bench_data.json \
        --md docs/results/bench_data.md

The JPEGs are generated in a temporary directory (default 2,000 images of 256x256 in 10
classes) unless --data-dir names an existing ImageFolder tree. The step rate is measured
here (--model, --norm, --threads on this device) or given with --consume-rate (e.g. a
GPU's measured images/s). The loader and the step are timed separately: in a real run
the workers compete with the compute threads for the same cores.
--image-size, --batch (= --batch-size), --model, --norm, --threads and --seed are
launch.train's options (same types, choices and checks), with this benchmark's defaults.
"""
import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from experiments.provenance import provenance, start
from toolkit import config

# launch.train's options, as launch.train parses and checks them (this benchmark's defaults)
RUN_OPTIONS = ("image_size", "batch_size", "model", "norm", "threads", "seed")


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.bench_data",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="0,1,2",
                   help="comma-separated numbers of loader workers to measure")
    p.add_argument("--images", type=int, default=2000, help="JPEGs to generate")
    p.add_argument("--source-size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--data-dir", default=None,
                   help="an existing ImageFolder tree (train/<class>/...) instead of "
                        "generated images")
    config.add_run_options(
        p, RUN_OPTIONS,
        defaults={"image_size": 224, "batch_size": 64, "model": "resnet18", "norm": "bn"},
        flags={"batch_size": ("--batch", "--batch-size")},
        notes={"image_size": "here the crop fed to the model",
               "batch_size": "here the images of one loader batch and of the measured step",
               "model": "here the model whose step rate is measured",
               "threads": "here the compute threads of the measured step"})
    p.add_argument("--steps", type=int, default=3, help="timed training steps (median)")
    p.add_argument("--consume-rate", type=float, default=0.0,
                   help="images/s the training step consumes, measured elsewhere (skips "
                        "the step measurement)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--md", help="write a markdown table to this file")
    return p


def parse_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    config.check_run_options(p, args, RUN_OPTIONS)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        p.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if any(w < 0 for w in args.workers):
        p.error("--workers must be >= 0")
    for name in ("images", "source_size", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.consume_rate < 0:
        p.error("--consume-rate must be >= 0")
    if args.threads == 0:  # as in launch.train: $OMP_NUM_THREADS, else the usable cores
        from toolkit.train import default_threads
        args.threads = default_threads(1)
    return args


def write_jpegs(root, count, size, seed, classes=10):
    """`count` JPEGs of size x size under root/{train,val}/class_k/: smooth colour fields
    plus noise, so they compress like photographs rather than like flat colour."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            label = i % classes
            folder = os.path.join(root, split, f"class_{label}")
            os.makedirs(folder, exist_ok=True)
            coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
            pixels = np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def loader_rate(dataset, batch, workers, seed):
    """Images/s of one epoch of the training loader after its first batch (worker start-up
    and the first decode are excluded)."""
    from toolkit.data.pipeline import TrainLoader
    loader = TrainLoader(dataset, batch, 0, 1, seed, workers=workers)
    try:
        batches = iter(loader.epoch(0))
        next(batches)
        start, images = time.perf_counter(), 0
        for x, _ in batches:
            images += len(x)
        return images / (time.perf_counter() - start)
    finally:
        loader.close()


def step_rate(model_name, norm, image_size, batch, steps, seed):
    """Images/s of forward + backward + SGD update on random images (median of `steps`)."""
    from models import build_model
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=10, in_channels=3, image_size=image_size,
                        norm=norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 1):  # the first step allocates and warms up: not timed
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def verdict(rates, consume):
    """Per worker count: does the loader keep up with the step? And the workers needed."""
    rows = {n: {"images_per_s": r, "input_bound": r < consume} for n, r in rates.items()}
    per_worker = [r / n for n, r in rates.items() if n > 0]
    if rates.get(0, 0.0) >= consume:
        needed = 0  # the training process alone keeps up
    else:
        needed = math.ceil(consume / max(per_worker)) if per_worker else None
    return rows, needed


def markdown(result, command):
    lines = ["# Input pipeline throughput", "",
             "```bash", command, "```", "",
             f"ImageFolder training pipeline ({result['images']} JPEGs of "
             f"{result['source_size']}x{result['source_size']}, random resized crop to "
             f"{result['image_size']} + flip + normalisation, batch {result['batch']}) against "
             f"the training step of `{result['model']}` (norm {result['norm']}, "
             f"{result['step_source']}): **{result['consume_images_per_s']:.1f} images/s**.",
             "", "| loader workers | images/s | input-bound? |", "|---|---|---|"]
    for n, row in result["loader"].items():
        lines.append(f"| {n} | {row['images_per_s']:.1f} | "
                     f"{'yes' if row['input_bound'] else 'no'} |")
    needed = result["workers_needed"]
    lines += ["", f"Workers needed to feed this step (from the best per-worker rate): "
              f"{needed if needed is not None else 'n/a (no worker count > 0 measured)'}.",
              "", f"Measured on {result['host']} ({result['cores']} usable cores, load average "
              f"{result['load_average']:.1f} at the end), torch {result['torch']}. The loader and the step were timed separately; during "
              f"training the workers share the cores with the compute threads.", ""]
    return "\n".join(lines)


def main(argv=None):
    started = start()
    args = parse_args(argv)
    from toolkit.data import DataError, load_dataset
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp
            print(f"writing {args.images} JPEGs of {args.source_size}x{args.source_size}",
                  flush=True)
            write_jpegs(tmp, args.images, args.source_size, args.seed)
        try:
            bundle = load_dataset("imagefolder", data_dir, seed=args.seed,
                                  image_size=args.image_size)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        # One thread in the training process while it loads (workers are single-threaded).
        torch.set_num_threads(1)
        rates = {}
        for n in args.workers:
            rates[n] = loader_rate(bundle.train, args.batch_size, n, args.seed)
            print(f"loader, {n} worker(s): {rates[n]:.1f} images/s", flush=True)
    if args.consume_rate:
        consume, source = args.consume_rate, "rate given with --consume-rate"
    else:
        threads = args.threads or cores
        torch.set_num_threads(threads)
        consume = step_rate(args.model, args.norm, args.image_size, args.batch_size, args.steps,
                            args.seed)
        source = f"measured on the CPU with {threads} thread(s)"
        print(f"training step of {args.model}: {consume:.1f} images/s ({source})", flush=True)
    rows, needed = verdict(rates, consume)
    for n, row in rows.items():
        print(f"{n} worker(s): {'input-bound' if row['input_bound'] else 'not input-bound'} "
              f"({row['images_per_s']:.1f} vs {consume:.1f} images/s)")
    result = dict(images=args.images if args.data_dir is None else len(bundle.train),
                  source_size=args.source_size, image_size=args.image_size, batch=args.batch_size,
                  model=args.model, norm=args.norm, step_source=source,
                  consume_images_per_s=consume, loader={str(n): r for n, r in rows.items()},
                  workers_needed=needed, cores=cores, load_average=os.getloadavg()[0],
                  host=platform.node(),
                  torch=torch.__version__, python=sys.version.split()[0])
    command = "python -m launch.bench_data " + " ".join(argv if argv is not None
                                                        else sys.argv[1:])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(result, command=command.strip(), provenance=provenance(
                argv, started, threads=args.threads or cores, module="launch.bench_data")),
                handle, indent=2)
            handle.write("\n")
    if args.md:
        with open(args.md, "w") as handle:
            handle.write(markdown(result, command.strip()))


if __name__ == "__main__":
    main()
