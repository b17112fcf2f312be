"""The training input pipeline with loader workers: the same batches for every number of
workers and after a resume, one clear error for a corrupt file or a dead worker, no hang.
Real JPEG/PNG files in tmp_path, real worker processes."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from tests.train_util import summary, train_ranks
from toolkit.data import load_dataset
from toolkit.data.pipeline import DataReadError, TrainLoader, default_workers


def write_tree(root, per_class=12, classes=("ant", "bee", "cat"), size=(20, 14)):
    """A small ImageFolder tree of real JPEGs (train) and PNGs (val)."""
    rng = np.random.default_rng(1)
    for split, ext in (("train", "jpg"), ("val", "png")):
        for name in classes:
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(per_class if split == "train" else 2):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.{ext}")
    return root


def epoch_batches(dataset, workers, epoch, start_step=0, rank=0, world=2, seed=5):
    loader = TrainLoader(dataset, 4, rank, world, seed, workers=workers)
    try:
        return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start_step)]
    finally:
        loader.close()


def same(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def test_batches_do_not_depend_on_the_number_of_workers_or_a_resume(tmp_path):
    train = load_dataset("imagefolder", str(write_tree(tmp_path)), seed=5, image_size=8).train
    inline = [epoch_batches(train, 0, e) for e in (0, 1)]
    assert len(inline[0]) == 36 // (4 * 2)
    assert not same(inline[0], inline[1])  # a new epoch: new order and new augmentation
    loader = TrainLoader(train, 4, 0, 2, 5, workers=2)  # one loader, workers kept across epochs
    try:
        parallel = [[(x.clone(), y.clone()) for x, y in loader.epoch(e)] for e in (0, 1)]
        pids = {p.pid for p in loader.loader._iterator._workers}
        assert len(pids) == 2
        again = [(x.clone(), y.clone()) for x, y in loader.epoch(0)]
        assert {p.pid for p in loader.loader._iterator._workers} == pids  # persistent
    finally:
        loader.close()
    assert same(inline[0], parallel[0]) and same(inline[1], parallel[1])
    assert same(inline[0], again)
    # Resuming in the middle of epoch 1 with a different number of workers.
    assert same(inline[1][2:], epoch_batches(train, 1, 1, start_step=2))


def test_a_loader_leaves_the_global_torch_rng_alone(tmp_path):
    train = load_dataset("imagefolder", str(write_tree(tmp_path)), seed=5, image_size=8).train
    torch.manual_seed(3)
    before = torch.get_rng_state()
    for workers in (0, 1):
        epoch_batches(train, workers, 0)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_is_one_error_naming_it(tmp_path, workers):
    root = write_tree(tmp_path)
    train = load_dataset("imagefolder", str(root), seed=5, image_size=8).train
    bad = root / "train" / "bee" / "007.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    with pytest.raises(DataReadError) as caught:
        for epoch in (0, 1):  # each rank reads half of the samples per epoch
            for _ in TrainLoader(train, 4, 0, 1, 5, workers=workers).epoch(epoch):
                pass
    message = str(caught.value)
    assert "\n" not in message and f"cannot read image {bad}" in message, message


class _DiesOnSample(Dataset):
    """Kills the process that loads sample `fatal`, as the kernel's OOM killer would."""

    def __init__(self, fatal):
        self.fatal = fatal

    def __len__(self):
        return 40

    def __getitem__(self, index):
        if index == self.fatal:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.full((2,), float(index)), index


def test_a_dead_worker_is_one_error_not_a_hang():
    with pytest.raises(DataReadError) as caught:
        for _ in TrainLoader(_DiesOnSample(13), 5, 0, 1, 0, workers=2).epoch(0):
            pass
    message = str(caught.value)
    # Usually the loader sees the worker gone; killed in the middle of sending a batch it
    # leaves a truncated message, which the loader reports as its failure instead.
    assert "\n" not in message and message.startswith("training data: ")
    assert ("loader worker" in message and "died" in message) or "loader failed" in message
    assert "batch" in message and "sample" in message


def test_worker_count_checks_and_default():
    cores = len(os.sched_getaffinity(0))
    assert default_workers(1, 1) == cores - 1
    assert default_workers(cores, 1) == 0 and default_workers(1, cores + 4) == 0
    with pytest.raises(ValueError, match="--workers must be an integer >= 0"):
        TrainLoader(_DiesOnSample(-1), 5, 0, 1, 0, workers=-1)


_STRAY_WORKERS = """
import sys, torch
from torch.utils.data import TensorDataset, _utils
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
from toolkit.data.pipeline import TrainLoader
# Workers that never get their stop message, as when a loader is collected in a reference
# cycle whose finalisers run out of order: torch then sends SIGTERM, which they ignore.
_MultiProcessingDataLoaderIter._mark_worker_as_unavailable = lambda *args, **kwargs: None
_utils.MP_STATUS_CHECK_INTERVAL = 0.5  # torch's wait for each worker before its SIGTERM
data = TensorDataset(torch.randn(64, 3), torch.arange(64))
loader = TrainLoader(data, 4, 0, 1, 0, workers=2)
batches = iter(loader.epoch(0))
next(batches)
print(*(p.pid for p in loader.loader._iterator._workers), flush=True)
if sys.argv[1] == "dropped":
    del batches, loader
"""


@pytest.mark.parametrize("how", ["open", "dropped"])
def test_a_process_with_stray_workers_still_exits(how):
    """multiprocessing's exit handler joins its children after a SIGTERM our workers ignore:
    the pipeline's own exit handler must end them first, or the process never exits."""
    proc = subprocess.run([sys.executable, "-c", _STRAY_WORKERS, how], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for pid in map(int, proc.stdout.split()):
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z", f"worker {pid} outlived the run"


# ---------------------------------------------------------------- launch.train on 2 ranks

TREE_RUN = ["--dataset", "imagefolder", "--image-size", "8", "--batch-size", "8", "--norm", "bn",
            "--strategy", "dasgd", "--epochs", "2"]


def _final_model(out):
    return torch.load(summary(out)["checkpoint"], weights_only=True)["model"]


@pytest.mark.mpi
@pytest.mark.slow
def test_training_is_bit_identical_for_any_workers_and_across_a_resume(tmp_path):
    """0 workers straight through vs 2 workers for epoch 1, then resumed with 1 worker."""
    root = write_tree(tmp_path / "tree")
    args = [*TREE_RUN, "--data-dir", root]
    train_ranks(2, *args, "--workers", "0", "--out", tmp_path / "w0")
    first = train_ranks(2, *args, "--workers", "2", "--out", tmp_path / "w2",
                        "--stop-after-epochs", "1")
    assert "stopped by --stop-after-epochs 1" in first.stdout
    train_ranks(2, *args, "--workers", "1", "--out", tmp_path / "w2", "--resume")
    straight, resumed = _final_model(tmp_path / "w0"), _final_model(tmp_path / "w2")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert summary(tmp_path / "w0")["steps"] == summary(tmp_path / "w2")["steps"] == 2 * 2


@pytest.mark.mpi
def test_a_corrupt_image_mid_run_ends_the_job_with_one_line_and_exit_2(tmp_path):
    root = write_tree(tmp_path / "tree")
    bad = root / "train" / "cat" / "005.jpg"  # not the first image: found while training
    bad.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    proc = train_ranks(2, *TREE_RUN, "--data-dir", root, "--workers", "2",
                       "--out", tmp_path / "run", timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"cannot read image {bad}" in errors[0], proc.stderr[-3000:]
