"""A full or read-only disk under a real run: one line, exit 2, nothing torn or left behind.

The disk is a small tmpfs mounted for the test (root only). Its size is set, page by page,
from the files a reference run with the same options writes, so that the first write that
does not fit is exactly the one under test.
"""
import json
import os
import subprocess

import pytest

from tests.fault_util import (assert_intact, assert_no_traceback, checkpoints, error_lines,
                              finish, no_temporary_files, Seen, start)

PAGE = 4096
BASE = ("--norm", "bn", "--strategy", "sync", "--log-interval", "5")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def pages(nbytes):
    return -(-nbytes // PAGE)


class Tmpfs:
    """A tmpfs of a given number of pages at `path`, unmounted at the end."""

    def __init__(self, path, n_pages, read_only=False):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={n_pages * PAGE}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")

    def unmount(self):
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


ARGS = ("--epochs", "1", "--max-steps", "10", "--checkpoint-interval", "5")


@pytest.fixture
def tmpfs(tmp_path_factory):
    mounted = []

    def mount(n_pages, read_only=False):
        fs = Tmpfs(tmp_path_factory.mktemp("disk"), n_pages, read_only)
        mounted.append(fs)
        return fs.path

    yield mount
    for fs in mounted:
        fs.unmount()


def run(launcher, np_, out, *args, timeout=180):
    job = start(launcher, np_, (*BASE, "--out", out, *args))
    stdout, stderr, _ = finish(job, Seen(job), timeout=timeout)
    return job.returncode, stdout, stderr


def file_pages(run_dir, name):
    return pages(os.path.getsize(os.path.join(run_dir, name)))


@pytest.fixture(scope="module")
def sizes(tmp_path_factory):
    """The same run on an ordinary disk (under a path as long as the tmpfs ones): the pages
    its config.json, metrics.jsonl, TensorBoard event files (none without the tensorboard
    package) and one checkpoint take."""
    out = tmp_path_factory.mktemp("disk") / "run"
    code, _, stderr = run("none", 1, out, *ARGS)
    assert code == 0, stderr[-3000:]
    return {"config": file_pages(out, "config.json"), "metrics": file_pages(out, "metrics.jsonl"),
            "tensorboard": sum(pages(p.stat().st_size)
                               for p in (out / "tensorboard").glob("events.out.tfevents.*")),
            "checkpoint": pages(os.path.getsize(checkpoints(out)[-1]))}


def logs(sizes):
    """The pages of config.json and of the run's logs."""
    return sizes["config"] + sizes["metrics"] + sizes["tensorboard"]


def assert_one_line(code, stderr, *needles):
    assert code == 2, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert_no_traceback(stderr)
    return lines[0]


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def assert_first_checkpoint_kept(out):
    kept = checkpoints(out)
    assert [p.name for p in kept] == ["ckpt-00000005.pt"], kept
    assert assert_intact(kept[0])["step"] == 5
    assert no_temporary_files(out) == []
    # Like every other output (a group can resume a shared run), not 0600.
    assert kept[0].stat().st_mode & 0o777 == 0o666 & ~umask()


@pytest.mark.parametrize("case", ["disk-checkpoint"])
def test_full_disk_at_a_checkpoint_keeps_the_last_good_one(tmpfs, sizes, case):
    # Room for one checkpoint and a half: the first is written, the second does not fit.
    disk = tmpfs(logs(sizes) + sizes["checkpoint"] * 3 // 2)
    code, _, stderr = run("none", 1, disk / "run", *ARGS)
    assert_one_line(code, stderr, "cannot write checkpoint", "ckpt-00000010.pt",
                    "No space left on device")
    assert_first_checkpoint_kept(disk / "run")


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("case", ["disk-checkpoint"])
def test_full_disk_on_rank_0_ends_every_rank(tmpfs, sizes, case):
    disk = tmpfs(logs(sizes) + sizes["checkpoint"] * 3 // 2)
    code, _, stderr = run("mpirun", 2, disk / "run", *ARGS)
    assert_one_line(code, stderr, "cannot write checkpoint", "No space left on device")
    assert_first_checkpoint_kept(disk / "run")


@pytest.mark.parametrize("case", ["disk-metrics"])
def test_full_disk_at_the_metrics_log(tmpfs, sizes, case):
    disk = tmpfs(sizes["config"])  # config.json fits, the first record does not
    out = disk / "run"
    code, _, stderr = run("none", 1, out, *ARGS)
    assert_one_line(code, stderr, "cannot write metrics log", "metrics.jsonl",
                    "No space left on device")
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # no partial record
    assert no_temporary_files(out) == []


@pytest.mark.parametrize("case", ["disk-tensorboard"])
def test_full_disk_at_the_tensorboard_events(tmpfs, sizes, case):
    pytest.importorskip("tensorboard")
    # config.json and metrics.jsonl fit; the first event, written after the first record
    # of metrics.jsonl, does not.
    disk = tmpfs(sizes["config"] + sizes["metrics"])
    out = disk / "run"
    code, _, stderr = run("none", 1, out, *ARGS)
    assert_one_line(code, stderr, "cannot write TensorBoard events",
                    str(out / "tensorboard"), "No space left on device")
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").open())] == [5]
    assert checkpoints(out) == []


@pytest.mark.parametrize("case", ["disk-summary"])
def test_full_disk_at_the_summary(tmpfs, sizes, case):
    # Both checkpoints (steps 5 and 10) fit, summary.json does not.
    disk = tmpfs(logs(sizes) + 2 * sizes["checkpoint"])
    out = disk / "run"
    code, stdout, stderr = run("none", 1, out, *ARGS)
    assert_one_line(code, stderr, "cannot write summary", "summary.json",
                    "No space left on device")
    assert not (out / "summary.json").exists()
    assert no_temporary_files(out) == []
    assert assert_intact(checkpoints(out)[-1])["step"] == 10
    assert "final:" not in stdout


@pytest.mark.parametrize("case", ["read-only-out"])
def test_read_only_out_is_named(tmpfs, case):
    disk = tmpfs(16, read_only=True)
    code, _, stderr = run("none", 1, disk / "run", "--epochs", "1", "--max-steps", "5")
    assert_one_line(code, stderr, "read-only file system", str(disk))
