"""--tensorboard: rank 0's TensorBoard event files hold the scalars of metrics.jsonl."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch.train import parser
from tests.fault_util import assert_no_traceback, error_lines
from tests.mpi_util import REPO
from tests.train_util import train_single, train_single_together
from toolkit import config

ARGS = ("--norm", "bn", "--epochs", "1", "--threads", "1")


def parse(*argv):
    return config.parse(parser(), list(argv))


def test_the_option_is_a_boolean_with_an_on_off_value():
    assert parse().tensorboard is None  # on when the package can be imported
    assert parse("--tensorboard").tensorboard is True
    assert parse("--no-tensorboard").tensorboard is False
    assert parse("--tensorboard", "off").tensorboard is False
    assert parse("--tensorboard", "on").tensorboard is True
    # Every boolean option is spelled the same way.
    assert parse("--inv-sync", "on").inv_sync is True
    assert parse("--inv-sync", "off", "--debug").inv_sync is False
    with pytest.raises(SystemExit):
        parser().parse_args(["--tensorboard", "maybe"])
    with pytest.raises(config.ConfigError, match="--tensorboard must be true, false or null"):
        config.RunConfig(tensorboard="yes").validate()


def test_importing_the_trainer_does_not_import_tensorboard():
    code = "import sys, toolkit.train; print(sorted(m for m in sys.modules if 'tensorboard' in m))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def metrics_scalars(records):
    """{tag: {step: (value, time)}} from metrics.jsonl records, tagged as in the event files."""
    expected = {}
    for record in records:
        for name, value in record.items():
            if name in ("kind", "time", "step") or isinstance(value, bool) or \
                    not isinstance(value, (int, float)):
                continue
            steps = expected.setdefault(f"{record['kind']}/{name}", {})
            assert record["step"] not in steps, (name, record)
            steps[record["step"]] = (value, record["time"])
    return expected


def read_records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def event_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_event_files_hold_the_metrics_at_their_steps(tmp_path):
    pytest.importorskip("tensorboard")
    out, off, bad = tmp_path / "run", tmp_path / "off", tmp_path / "bad"
    bad.mkdir()
    (bad / "tensorboard").write_text("a file where the event directory goes\n")
    first, no_tb, failed = train_single_together(
        ("--out", out, "--max-steps", 6, "--checkpoint-interval", 5, *ARGS),
        ("--out", off, "--max-steps", 5, "--tensorboard", "off", *ARGS),
        ("--out", bad, "--max-steps", 5, "--tensorboard", *ARGS))
    assert first.returncode == 0, first.stderr[-3000:]
    logged_before = read_records(out)
    assert [(r["kind"], r["step"]) for r in logged_before] == \
        [("interval", 5), ("eval", 6), ("epoch", 6)]
    # As if the run had died after logging step 6 but before checkpointing it: resumed
    # from step 5, it does step 6 again in a second event file, which supersedes what the
    # first file holds after step 5; metrics.jsonl keeps both.
    os.unlink(out / "checkpoints" / "ckpt-00000006.pt")
    second = train_single("--out", out, "--resume", "--max-steps", 12, *ARGS)
    assert second.returncode == 0, second.stderr[-3000:]
    logdir = out / "tensorboard"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2

    records = read_records(out)
    assert records[:len(logged_before)] == logged_before
    expected = metrics_scalars([r for r in logged_before if r["step"] <= 5] +
                               records[len(logged_before):])
    assert {"interval/loss", "interval/lr", "interval/images_per_s", "eval/test_acc",
            "epoch/train_loss", "epoch/test_loss"} <= set(expected)
    assert max(step for steps in expected.values() for step in steps) == 12
    found = event_scalars(logdir)
    assert set(found) == set(expected)
    for tag, events in found.items():
        assert [e.step for e in events] == sorted(expected[tag]), tag
        for event in events:
            value, when = expected[tag][event.step]
            assert event.value == float(np.float32(value)), (tag, event.step, value)
            assert event.wall_time == when

    assert no_tb.returncode == 0, no_tb.stderr[-3000:]
    assert (off / "metrics.jsonl").exists() and not (off / "tensorboard").exists()
    assert json.loads((off / "config.json").read_text())["tensorboard"] is False

    # A failed write ends the run like one of metrics.jsonl: one line, exit code 2.
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert error_lines(failed.stderr) == [
        f"error: cannot write TensorBoard events {bad / 'tensorboard'}: File exists"]
    assert_no_traceback(failed.stdout, failed.stderr)
