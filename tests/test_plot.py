"""Run plots: training writes plot.png into its run directory; launch.plot draws several
runs into one PNG and refuses a directory that is not a run (one line, exit 2)."""
import subprocess
import sys

import pytest

from tests.mpi_util import REPO
from tests.train_util import train_single
from experiments.curves import load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plot(*args):
    return subprocess.run([sys.executable, "-m", "launch.plot", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _is_png(path, min_bytes=20_000):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) >= min_bytes  # a figure, not an empty canvas


@pytest.mark.slow
def test_training_writes_its_plot_and_launch_plot_draws_two_runs(tmp_path):
    runs = []
    for name, extra in (("sgd", []), ("adamw", ["--optimizer", "adamw", "--lr", "0.003"])):
        out = tmp_path / name
        proc = train_single("--norm", "bn", "--strategy", "none", "--epochs", "2",
                            "--batch-size", "64", "--workers", "0", "--out", out, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"plot: {out}/plot.png" in proc.stdout
        assert _is_png(out / "plot.png")
        runs.append(out)
    run = load_run(str(runs[0]))
    assert run.label == "small_cnn/bn/none/1 rank"
    assert len(run.epoch) == 2 and run.interval and run.interval[0]["step"] == 5
    figure = tmp_path / "figures" / "both.png"
    proc = _plot(*runs, "--out", figure)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {figure} (2 runs)"
    assert _is_png(figure)


def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a run")
    for target in (tmp_path / "notes", tmp_path / "missing"):
        proc = _plot(target, "--out", tmp_path / "x.png")
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {target} "), proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_a_one_line_note(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from experiments.curves import plot_finished_run\n"
            f"print(plot_finished_run({str(tmp_path)!r}))\n")
    (tmp_path / "config.json").write_text('{"model": "small_cnn"}')
    (tmp_path / "metrics.jsonl").write_text('{"kind": "interval", "step": 1, "loss": 2.0}\n')
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "note: matplotlib is not installed: no plot (pip install matplotlib)\n"
    assert not (tmp_path / "plot.png").exists()
