"""The claims study (python -m launch.study claims): its resume logic on fake run
directories (no training), the confidence bands of launch.plot --bands on hand-made runs,
and one tiny end-to-end study on a generated IDX data set."""
import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from experiments.bands import band, group_runs
from experiments.studies import plan
from experiments.studies.claims_cli import fix_scale
from experiments.studies.runner import DIVERGED, DONE, NEW, PARTIAL, STOPPED, Runner
from experiments.studies.verdicts import interval
from tests.mpi_util import REPO

CONFIG = plan.Config(norm="inv", lr=1.0)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _fake_run(runner, seed, code, *, summary=True):
    """A stand-in for launch.train: writes summary.json (if asked) and exits with `code`."""
    out = runner.directory(CONFIG, seed)
    script = (f"import json, os, sys\nos.makedirs({out!r}, exist_ok=True)\n"
              f"open(os.path.join({out!r}, 'ran'), 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
              + (f"json.dump({{'stopped_by': None, 'test_acc': 0.5, 'steps': 3}}, "
                 f"open(os.path.join({out!r}, 'summary.json'), 'w'))\n" if summary else "")
              + f"sys.exit({code})\n")
    return [sys.executable, "-c", script]


class FakeRunner(Runner):
    def __init__(self, out, outcomes):
        super().__init__(str(out), jobs=2, say=lambda text: None)
        self.outcomes, self.started = outcomes, []

    def command(self, config, seed, resume=False):
        self.started.append((seed, resume))
        code, summary = self.outcomes[seed]
        return _fake_run(self, seed, code, summary=summary) + (["--resume"] if resume else []), \
            dict(os.environ)


def test_finished_runs_are_never_redone_and_the_others_resume_or_restart(tmp_path):
    runner = FakeRunner(tmp_path, {2: (0, True), 3: (0, True), 4: (3, False), 5: (0, True)})
    d = {s: runner.directory(CONFIG, s) for s in range(6)}
    _write(os.path.join(d[0], "summary.json"), '{"stopped_by": null, "test_acc": 0.8}')
    _write(os.path.join(d[1], "diverged.json"), '{"exit": 3}')
    _write(os.path.join(d[2], "summary.json"), '{"stopped_by": "SIGTERM"}')  # stopped
    _write(os.path.join(d[3], "metrics.jsonl"), '{"kind": "eval"}\n')  # killed hard
    assert [runner.state(CONFIG, s) for s in range(6)] == \
        [DONE, DIVERGED, STOPPED, PARTIAL, NEW, NEW]
    finished = runner.run_all([(CONFIG, s) for s in range(6)], lambda c: 1.0)
    assert finished == 4 and runner.failed == []
    assert sorted(runner.started) == [(2, True), (3, False), (4, False), (5, False)]
    assert not os.path.exists(os.path.join(d[3], "metrics.jsonl"))  # restarted from scratch
    assert runner.state(CONFIG, 4) == DIVERGED  # exit 3: recorded, never run again
    timing = json.loads(open(os.path.join(d[2], "study.json")).read())
    assert timing["exit"] == 0 and timing["seconds"] > 0 and timing["cpu_s"] > 0
    assert [runner.state(CONFIG, s) for s in range(6)] == \
        [DONE, DIVERGED, DONE, DONE, DIVERGED, DONE]
    runner.started.clear()
    assert runner.run_all([(CONFIG, s) for s in range(6)], lambda c: 1.0) == 0
    assert runner.started == []


def test_a_failing_run_is_tried_twice_then_reported_and_bad_input_once(tmp_path):
    runner = FakeRunner(tmp_path, {0: (4, False), 1: (2, False)})
    assert runner.run_all([(CONFIG, 0), (CONFIG, 1)], lambda c: 1.0) == 0
    assert sorted(runner.started) == [(0, False), (0, False), (1, False)]
    assert sorted((s, code) for c, s, code, _ in runner.failed) == [(0, 4), (1, 2)]


def test_an_output_directory_keeps_its_sizes(tmp_path):
    fix_scale(str(tmp_path), plan.SCALE, None)
    fix_scale(str(tmp_path), plan.SCALE, None)
    with pytest.raises(SystemExit, match="other sizes"):
        fix_scale(str(tmp_path), {**plan.SCALE, "evals": 3}, None)
    # a new model's sizes (a new family) extend the record; the old sizes stay fixed
    grown = {**plan.SCALE, "models": {**plan.SCALE["models"], "new_net": {"epochs": 1}}}
    fix_scale(str(tmp_path), grown, None, record=False)  # --report-only: checks, keeps
    assert "new_net" not in (tmp_path / "plan.json").read_text()
    fix_scale(str(tmp_path), grown, None)
    assert "new_net" in (tmp_path / "plan.json").read_text()
    fix_scale(str(tmp_path), grown, None)
    with pytest.raises(SystemExit, match="other sizes"):
        fix_scale(str(tmp_path), plan.SCALE, None)  # the record now has new_net


def test_plan_shares_runs_and_puts_multi_rank_runs_last():
    fams = plan.families()
    runs = plan.runs_of(fams, [0, 1])
    assert len(runs) == len(set(runs))
    l1 = {c.name() for c in plan.l1().configs}
    assert {c.name() for c in plan.l2().configs} <= l1  # L2 is L1's runs
    assert plan.Config(lr=0.1).name() in l1  # S's k = 1 runs too
    seed0 = [c for c, s in runs if s == 0]
    assert [c.ranks > 1 for c in seed0] == sorted(c.ranks > 1 for c in seed0)
    args = plan.train_args(plan.Config(norm="bn", lr=0.1), 3)
    assert "--inv-stats-every" not in args and args[args.index("--seed") + 1] == "3"


def _fake_study_run(directory, lr, seed, accs):
    _write(os.path.join(directory, "config.json"), json.dumps(
        {"model": "small_cnn", "norm": "inv", "lr": lr, "seed": seed, "out": directory}))
    _write(os.path.join(directory, "metrics.jsonl"), "".join(
        json.dumps({"kind": "eval", "step": 10 * (i + 1), "val_acc": a, "test_acc": a}) + "\n"
        for i, a in enumerate(accs)))


def test_bands_are_the_t_interval_across_seeds(tmp_path):
    accs = {0.1: [[0.5, 0.7], [0.6, 0.8], [0.55, 0.9]], 1.0: [[0.4, 0.6], [0.5, 0.62]]}
    dirs = []
    for lr, curves in accs.items():
        for seed, c in enumerate(curves):
            dirs.append(str(tmp_path / f"lr{lr}_s{seed}"))
            _fake_study_run(dirs[-1], lr, seed, c)
    groups = group_runs(dirs)
    assert [(label, len(curves)) for label, curves in groups] == [("lr=0.1", 3), ("lr=1.0", 2)]
    rows = band(groups[0][1], "test_acc")
    assert [r["step"] for r in rows] == [10, 20]
    expected = interval([0.7, 0.8, 0.9])
    assert (rows[1]["lo"], rows[1]["hi"], rows[1]["n"]) == \
        pytest.approx((expected["lo"], expected["hi"], 3))
    png = tmp_path / "bands.png"
    proc = subprocess.run([sys.executable, "-m", "launch.plot", *dirs, "--bands", "--out",
                           str(png)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {png} (5 runs in 2 configurations)"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_idx(directory, n_train=600, n_test=300, seed=0):
    """A tiny learnable Fashion-MNIST stand-in: a bright bar whose row is the class."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for name, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 + 2 * c:4 + 2 * c, 4:24] = 250
        with gzip.open(os.path.join(directory, f"{name}-images-idx3-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
        with gzip.open(os.path.join(directory, f"{name}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + y.tobytes())


def test_a_tiny_study_end_to_end_and_again_without_training(tmp_path):
    write_idx(tmp_path / "data")
    scale = {"val_size": 100, "evals": 2,
             "models": {"small_cnn": {"train_subset": 256, "epochs": 1}},
             "families": {"S": {"lrs": [1.0], "ks": [1, 10]}}}
    (tmp_path / "scale.json").write_text(json.dumps(scale))
    out, docs = tmp_path / "study", tmp_path / "published"
    cmd = [sys.executable, "-m", "launch.study", "claims", "--out", str(out), "--only", "S",
           "--seeds", "2", "--scale", str(tmp_path / "scale.json"),
           "--data-dir", str(tmp_path / "data"), "--publish", str(docs)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("] small_cnn_inv_lr1_b32") == 4  # 2 configs x 2 seeds
    result = json.loads((out / "claims.json").read_text())
    [claim] = result["comparisons"]
    assert claim["id"] == "S.lr1.k10" and claim["kind"] == "equivalence"
    assert claim["seeds"] == [0, 1] and len(claim["values"]) == 2
    assert claim["verdict"] in ("supported", "contradicted", "inconclusive")
    assert result["provenance"]["command"].startswith("python -m launch.study claims --out ")
    rows = [json.loads(l) for l in (out / "claims_S.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["curve"] and r["wall_s"] > 0 for r in rows)
    assert "S.lr1.k10" in (out / "claims.md").read_text()
    assert sorted(os.listdir(docs)) == ["claims.json", "claims.md", "claims_S.json",
                                        "claims_S.jsonl", "claims_S.md", "claims_S.png"]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "] small_cnn" not in again.stdout  # every run finished: none trained again
    assert "S.lr1.k10: " in again.stdout
