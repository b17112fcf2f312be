"""Failures that only one rank sees: that rank says what is wrong, the job ends quickly.

Real 2-rank jobs: a corrupt image read by rank 1 only (under horovodrun, the main
launcher), and a rank frozen in the middle of `--strategy sync` (a stalled collective).
"""
import os
import re
import signal

import pytest

from tests.fault_util import (LONG, Seen, assert_no_traceback, checkpoints, error_lines,
                              finish, start, training)

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


def make_imagefolder(root, per_class=12, size=40):
    """train/{cat,dog} and val/{cat,dog}, 12 JPEGs of 40x40 each."""
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    return root


def first_image_of_rank(data_dir, rank, world_size, batch_size, seed=0):
    """The training image `rank` reads first in epoch 0 (the toolkit's own sharding)."""
    from toolkit.data import load_dataset
    from toolkit.data.sharding import shard_indices
    data = load_dataset("imagefolder", str(data_dir), seed=seed, image_size=32)
    first = shard_indices(len(data.train), batch_size, rank, world_size, seed, 0, True)[0][0]
    return data.train.samples[first][0]


@pytest.mark.parametrize("case", ["data-rank1"])
def test_corrupt_image_in_rank_1_shard_is_named_by_rank_1(tmp_path, case):
    data_dir = make_imagefolder(tmp_path / "images")
    broken = first_image_of_rank(data_dir, 1, 2, 4)
    with open(broken, "r+b") as f:
        f.truncate(100)
    out = tmp_path / "run"
    job = start("horovodrun", 2, ("--dataset", "imagefolder", "--data-dir", data_dir,
                                  "--image-size", "32", "--batch-size", "4", "--norm", "bn",
                                  "--epochs", "1", "--out", out))
    stdout, stderr, _ = finish(job, Seen(job), timeout=120)
    assert job.returncode == 2, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1: "), stderr[-3000:]
    assert f"cannot read image {broken}" in lines[0], lines[0]
    assert_no_traceback(stdout, stderr)
    assert checkpoints(out) == []


@pytest.mark.load  # the rank failure `make test` runs under load (docs/faults.md)
@pytest.mark.parametrize("case", ["sync-stall"])
def test_frozen_rank_under_sync_ends_with_exit_4(tmp_path, case):
    out = tmp_path / "run"
    job = start("mpirun", 2, (*LONG, "--strategy", "sync", "--out", out),
                env={"TOOLKIT_COMM_TIMEOUT_S": "5"})
    seen = Seen(job)
    try:
        training(job, out)
        ranks = sorted(seen.ranks())
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGSTOP)  # either rank: the other one reports the stall
        stdout, stderr, _ = finish(job, seen, timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 4, stderr[-3000:]
    lines = error_lines(stderr)
    # The stop lands in whichever collective is next: a step's gradients, the epoch end's
    # model synchronisation, the stop vote or an evaluation sum; each has the deadline.
    assert len(lines) == 1 and re.match(r"error: (rank \d+: )?collective '[\w.]+' stalled",
                                        lines[0]), stderr[-3000:]
    assert "stalled at step" in lines[0], lines[0]
    assert_no_traceback(stdout, stderr)


@pytest.mark.parametrize("which,line", [
    ("vote", "collective 'train.stopvote' stalled at step 7: rank 0 waited"),
    ("sum", "collective 'eval.totals' stalled: rank 0 waited")])
def test_blocking_collectives_outside_the_step_have_the_deadline(which, line):
    """A rank frozen between steps leaves its peer in the stop vote or an evaluation sum,
    not in the gradients: those waits end at the job's deadline too (exit 4 in a run),
    not at Horovod's own shutdown, 30 s later."""
    from tests.mpi_util import py, run_ranks
    # check=False: the ranks leave with os._exit, without MPI's finalize (as a failed run does)
    out = run_ranks(2, py("blocking_stall.py", which), timeout=120, check=False,
                    env={"TOOLKIT_COMM_TIMEOUT_S": "3"}).stdout
    assert line in out, out
    waited = float(re.search(r"after ([\d.]+) s", out).group(1))
    assert waited < 3 + 20, out  # Horovod's backstop would be 3 + 30 s
