"""The training input pipeline with loader workers: the same batches for every number of
workers and after a resume, one clear error for a corrupt file or a dead worker, no hang.
Real JPEG/PNG files in tmp_path, real worker processes."""
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

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
    assert "\n" not in message and "loader worker" in message and "died" in message
    assert "batch" in message and "sample" in message


def test_worker_count_checks_and_default():
    cores = len(os.sched_getaffinity(0))
    assert default_workers(1, 1) == cores - 1
    assert default_workers(cores, 1) == 0 and default_workers(1, cores + 4) == 0
    with pytest.raises(ValueError, match="--workers must be an integer >= 0"):
        TrainLoader(_DiesOnSample(-1), 5, 0, 1, 0, workers=-1)
