"""Scaling tooling without a cluster: sweep planning (--dry-run), report and projection.

The report tests write summary.json files shaped like launch.train's; the real end-to-end
path (sbatch -> launch.train -> report) is in tests/test_slurm.py."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from toolkit.scaling import projection as pj
from toolkit.scaling.calibration import fit_alpha_beta, measured_inputs, ring_allreduce_s
from toolkit.scaling.report import build_table, load_run, make_report
from toolkit.scaling.sweep import SweepConfig, plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "launch.scaling", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def write_run(root, name, *, strategy, workers, ips, mode=None, batch=32):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    summary = {"model": "small_cnn", "dataset": "digits", "norm": "bn", "strategy": strategy,
               "world_size": workers, "batch_per_rank": batch, "global_batch": batch * workers,
               "images_per_s": ips, "step_s": batch * workers / ips, "comm_wait_s": 0.1,
               "test_acc": 0.9, "wall_s": 10.0}
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summary, f)
    if mode:
        with open(os.path.join(d, "scaling.json"), "w") as f:
            json.dump({"mode": mode, "strategy": strategy, "workers": workers, "job_id": "1"}, f)
    return d


# ---------------------------------------------------------------- sweep planning

def test_sweep_plan_weak_and_strong_batches(tmp_path):
    cfg = SweepConfig(workers=[4, 1, 2], batch_size=16, out=str(tmp_path),
                      train_args=["--model", "small_cnn"])
    jobs = plan(cfg)
    assert len(jobs) == 2 * 2 * 3  # modes x strategies x worker counts
    weak = {(j.strategy, j.workers): j for j in jobs if j.mode == "weak"}
    strong = {(j.strategy, j.workers): j for j in jobs if j.mode == "strong"}
    assert all(j.batch_per_rank == 16 for j in weak.values())
    # strong: global batch = 16 x 4 fixed, split over the ranks
    assert [strong[("sync", n)].batch_per_rank for n in (1, 2, 4)] == [64, 32, 16]
    assert {j.global_batch for j in strong.values()} == {64}
    job = strong[("dasgd", 2)]
    assert job.run_dir == os.path.join(str(tmp_path), "strong-dasgd-n2")
    assert "--ntasks=2" in job.argv and job.argv[0] == "sbatch"
    tail = job.argv[job.argv.index(os.path.join(REPO, "slurm", "train.sbatch")) + 1:]
    assert tail == ["--model", "small_cnn", "--strategy", "dasgd", "--batch-size", "32",
                    "--out", job.run_dir]
    assert len({j.run_dir for j in jobs}) == len(jobs)
    assert not os.listdir(tmp_path)  # planning creates nothing


def test_sweep_nodes_and_extra_options(tmp_path):
    cfg = SweepConfig(workers=[8], modes=["weak"], strategies=["sync"], out=str(tmp_path),
                      ntasks_per_node=4, cpus_per_task=2, gpus_per_task=1, time="00:10:00",
                      partition="gpu", launcher="mpirun", sbatch_args=["--qos=debug"])
    argv = plan(cfg)[0].argv
    for opt in ("--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=2", "--gpus-per-task=1",
                "--time=00:10:00", "--partition=gpu", "--qos=debug"):
        assert opt in argv
    assert any(a.startswith("--export=ALL,TOOLKIT_LAUNCHER=mpirun") for a in argv)


@pytest.mark.parametrize("changes, message", [
    (dict(workers=[]), "--workers is empty"),
    (dict(workers=[0, 2]), "positive integer"),
    (dict(modes=["diagonal"]), "unknown mode 'diagonal'"),
    (dict(strategies=["async"]), "unknown strategy 'async'"),
    (dict(launcher="aprun"), "unknown launcher 'aprun'"),
    (dict(workers=[1, 3], global_batch=64), "not divisible by worker count(s) [3]"),
    (dict(train_args=["--out=x"]), "--out is set by the sweep"),
    (dict(template="/nonexistent.sbatch"), "sbatch template not found"),
])
def test_sweep_rejects_bad_input(tmp_path, changes, message):
    cfg = SweepConfig(**{"workers": [1, 2], "out": str(tmp_path), **changes})
    with pytest.raises(ValueError) as err:
        plan(cfg)
    assert message in str(err.value)


def test_sweep_without_a_checkout_asks_for_the_template(tmp_path, monkeypatch):
    from toolkit.scaling import sweep
    monkeypatch.setattr(sweep, "toolkit_root", lambda: str(tmp_path))  # no slurm/ there
    with pytest.raises(ValueError, match="pass --template FILE"):
        plan(SweepConfig(workers=[1], out=str(tmp_path / "sw")))
    template = tmp_path / "job.sbatch"
    template.write_text("#!/bin/bash\n")
    jobs = plan(SweepConfig(workers=[1], out=str(tmp_path / "sw"), template=str(template)))
    assert jobs and all(str(template) in job.argv for job in jobs)


def test_sweep_cli_dry_run_prints_commands(tmp_path):
    out = tmp_path / "sw"
    proc = run_cli("sweep", "--workers", "1,2", "--modes", "weak", "--out", out, "--dry-run",
                   "--", "--model", "small_cnn", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("sbatch ") for line in lines)
    assert "--strategy sync" in lines[0] and "--strategy dasgd" in lines[-1]
    assert not out.exists()
    bad = run_cli("sweep", "--workers", "1,2", "--strategies", "sync,nope", "--dry-run")
    assert bad.returncode == 2 and "unknown strategy 'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_sweep_wrapper_script_dry_run(tmp_path):
    proc = subprocess.run([os.path.join(REPO, "slurm", "sweep.sh"), "--workers", "2,4",
                           "--modes", "strong", "--strategies", "dasgd", "--global-batch", "64",
                           "--out", str(tmp_path / "s"), "--dry-run", "--", "--epochs", "1"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [("--batch-size 32" in lines[0]), ("--batch-size 16" in lines[1])] == [True, True]
    assert all(os.path.join(REPO, "slurm", "train.sbatch") in line for line in lines)


# ---------------------------------------------------------------- report

def test_report_speedup_efficiency_and_outputs(tmp_path):
    root = str(tmp_path)
    write_run(root, "weak-sync-n1", strategy="sync", workers=1, ips=100.0, mode="weak")
    write_run(root, "weak-sync-n2", strategy="sync", workers=2, ips=180.0, mode="weak")
    write_run(root, "weak-sync-n4", strategy="sync", workers=4, ips=300.0, mode="weak")
    write_run(root, "weak-dasgd-n2", strategy="dasgd", workers=2, ips=190.0, mode="weak")
    write_run(root, "weak-dasgd-n4", strategy="dasgd", workers=4, ips=380.0, mode="weak")
    os.makedirs(tmp_path / "weak-dasgd-n8")  # submitted but not finished
    (tmp_path / "weak-dasgd-n8" / "scaling.json").write_text('{"mode": "weak", "job_id": "9"}')

    text, paths = make_report(root)
    rows = {(r["strategy"], int(r["workers"])): r
            for r in csv.DictReader(open(paths["csv"]))}
    assert set(rows) == {("sync", 1), ("sync", 2), ("sync", 4), ("dasgd", 2), ("dasgd", 4)}
    assert float(rows[("sync", 4)]["speedup"]) == pytest.approx(3.0)
    assert float(rows[("sync", 4)]["efficiency"]) == pytest.approx(0.75)
    assert float(rows[("sync", 2)]["efficiency"]) == pytest.approx(0.9)
    # dasgd's baseline is its own smallest run (2 workers)
    assert float(rows[("dasgd", 4)]["speedup"]) == pytest.approx(2.0)
    assert float(rows[("dasgd", 4)]["efficiency"]) == pytest.approx(1.0)
    assert float(rows[("dasgd", 4)]["vs_sync"]) == pytest.approx(380 / 300)
    assert rows[("sync", 1)]["mode"] == "weak"
    assert "weak-dasgd-n8" in text  # unfinished runs are listed, not silently dropped
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["png"]) > 10_000
    assert "| weak | sync | 4 |" in open(paths["md"]).read()


def test_report_deduplicates_newest_and_keeps_modes_apart(tmp_path):
    root = str(tmp_path)
    old = write_run(root, "a", strategy="sync", workers=2, ips=50.0, mode="strong")
    new = write_run(root, "b", strategy="sync", workers=2, ips=70.0, mode="strong")
    os.utime(os.path.join(old, "summary.json"), (1, 1))
    os.utime(os.path.join(new, "summary.json"), (2, 2))
    write_run(root, "c", strategy="sync", workers=2, ips=10.0, mode="weak")
    table = build_table([load_run(os.path.join(root, d)) for d in "abc"])
    assert [(r.mode, r.images_per_s) for r in table] == [("strong", 70.0), ("weak", 10.0)]


def test_report_cli_errors_are_one_line(tmp_path):
    missing = run_cli("report", tmp_path / "nope")
    assert missing.returncode == 2 and "run directory not found" in missing.stderr
    empty = run_cli("report", tmp_path)
    assert empty.returncode == 2 and "no finished runs" in empty.stderr
    d = tmp_path / "broken"
    d.mkdir()
    (d / "summary.json").write_text('{"strategy": "sync", "world_size": 2}')
    bad = run_cli("report", tmp_path)
    assert bad.returncode == 2 and "lacks key(s) images_per_s" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    (d / "summary.json").write_text("{not json")
    assert "is not valid JSON" in run_cli("report", tmp_path).stderr


# ---------------------------------------------------------------- projection

def test_alpha_beta_fit_recovers_parameters():
    alpha, beta = 2e-5, 5e8
    points = [(p, n, float(ring_allreduce_s(p, n, alpha, beta)))
              for p, n in ((2, 1e3), (2, 1e6), (4, 4e7), (8, 1e5))]
    a, b = fit_alpha_beta(points)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6)
    # one size: alpha assumed, beta solved so the model reproduces the measurement
    a1, b1 = fit_alpha_beta([(2, 4.4e7, 0.355)], alpha=1e-5)
    assert float(ring_allreduce_s(2, 4.4e7, a1, b1)) == pytest.approx(0.355)
    with pytest.raises(ValueError, match="lower --alpha"):
        fit_alpha_beta([(2, 10.0, 1e-6)], alpha=1e-3)


def bench_json(path, **extra):
    data = {"rate": "500mbit", "step_s": {"none": 1.0, "sync": 1.6, "local": 1.7, "dasgd": 1.1},
            "dasgd_over_none": 1.1, "sync_over_none": 1.6, "hidden_fraction": 0.83,
            "world_size": 2, "allreduce_s": 0.9, "bytes": 44_000_000, "batch_size": 32}
    data.update(extra)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def test_projection_model_from_bench_json(tmp_path):
    m = measured_inputs(bench_json(tmp_path / "b.json"))
    assert (m.compute_s, m.workers, m.bytes, m.batch_per_rank) == (1.0, 2, 44e6, 32)
    model, notes = pj.calibrate(m, alpha=1e-5)
    assert model.allreduce_s(2) == pytest.approx(0.9)
    # calibrated overlap reproduces the measured sync step exactly at p=2
    assert model.step_s("sync", 2) == pytest.approx(1.6)
    assert model.overlap == pytest.approx(0.3)
    # dasgd's measured cost beyond the model (1.1 - 1.0) is kept as a per-step overhead
    assert model.dasgd_overhead_s == pytest.approx(0.1)
    assert model.step_s("dasgd", 2) == pytest.approx(1.1)
    rows = pj.project(model, [8, 64, 4096], m.batch_per_rank)
    for r in rows:
        t = model.allreduce_s(r["workers"])
        assert r["dasgd_step_s"] == pytest.approx(1.0 + max(0.0, t - 1.0) + 0.1)
        assert r["sync_step_s"] == pytest.approx(1.0 + max(0.0, t - 0.3))
        assert r["sync_efficiency"] == pytest.approx(1.0 / r["sync_step_s"])
        assert r["dasgd_images_per_s"] == pytest.approx(r["workers"] * 32 / r["dasgd_step_s"])
        assert r["dasgd_over_sync"] >= 1.0
    # the ring's bandwidth term saturates at 2n/beta, its latency term grows with p
    assert rows[0]["allreduce_s"] < rows[-1]["allreduce_s"] < 2 * 0.9 + 2 * 4095 * 1e-5 + 1e-9
    # alpha came from the caller (--alpha): said so, not called an assumption
    assert any("given by --alpha" in n for n in notes)
    assert not any("ASSUMED" in n for n in notes)
    _, default_notes = pj.calibrate(m)
    assert any("ASSUMED" in n for n in default_notes)


def test_projection_dasgd_period_and_delay():
    m = measured_inputs(compute_s=0.1, allreduce_s=0.5, nbytes=1e7, workers=2)
    model, _ = pj.calibrate(m, alpha=0.0, period=4, delay=2)
    t = model.allreduce_s(16)
    assert model.step_s("dasgd", 16) == pytest.approx(0.1 + (t - 0.2) / 4)
    assert model.overlap == 0.0  # nothing measured about sync: pessimistic default


def test_project_cli_writes_table_json_png(tmp_path):
    out = tmp_path / "proj"
    proc = run_cli("project", "--bench", bench_json(tmp_path / "b.json"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Assumptions:" in proc.stdout and "ring allreduce" in proc.stdout
    data = json.load(open(f"{out}.json"))
    assert [r["workers"] for r in data["rows"]] == [2 ** k for k in range(3, 13)]
    assert data["assumptions"] and math.isfinite(data["model"]["beta"])
    assert "| 4096 |" in open(f"{out}.md").read()
    assert open(f"{out}.png", "rb").read(4) == b"\x89PNG"


def test_project_cli_flags_and_errors(tmp_path):
    ok = run_cli("project", "--compute-s", "0.5", "--allreduce-s", "0.2", "--bytes", "1e7",
                 "--workers", "8,16", "--out", tmp_path / "p")
    assert ok.returncode == 0, ok.stderr
    assert [r["workers"] for r in json.load(open(tmp_path / "p.json"))["rows"]] == [8, 16]
    cases = [
        (["--compute-s", "0.5"], "no allreduce timing"),
        (["--allreduce-s", "0.2", "--compute-s", "0.5"], "pass --bytes"),
        (["--bench", tmp_path / "missing.json"], "benchmark JSON not found"),
        (["--bench", bench_json(tmp_path / "n.json", step_s={"sync": 1.0})], "include 'none'"),
        (["--compute-s", "0.5", "--allreduce-s", "0.2", "--bytes", "1e7", "--workers", "x"],
         "--workers 'x'"),
    ]
    for args, message in cases:
        proc = run_cli("project", *args, "--out", tmp_path / "e")
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


def test_projection_reads_bench_comm_layout(tmp_path):
    """launch.bench_comm's layout: first transport's step times on top, every transport
    (with its allreduce timing) under by_transport, the model by name (no byte count)."""
    def section(none, sync, dasgd, allreduce):
        return {"step_s": {"none": none, "sync": sync, "local": sync, "dasgd": dasgd},
                "allreduce_s": allreduce, "hidden_fraction": 0.7}
    mpi, gloo = section(0.8, 1.1, 0.87, 0.5), section(0.9, 1.2, 0.95, 0.6)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"model": "small_cnn", "batch_per_rank": 32, "ranks": 2,
                                "period": 2, "delay": 1, "by_transport": {"mpi": mpi,
                                                                          "gloo": gloo},
                                "step_s": mpi["step_s"], "transport": "mpi"}))
    from models import build_model
    nbytes = 4 * sum(p.numel() for p in build_model("small_cnn", num_classes=10).parameters())
    m = measured_inputs(str(path))  # top level + the mpi section's allreduce
    assert (m.compute_s, m.workers, m.bytes, m.period) == (0.8, 2, nbytes, 2)
    assert m.points == [(2, nbytes, 0.5)] and "small_cnn" in m.bytes_note
    g = measured_inputs(str(path), "gloo")
    assert (g.compute_s, g.sync_s, g.points) == (0.9, 1.2, [(2, nbytes, 0.6)])
    assert pj.calibrate(g, alpha=1e-6)[0].period == 2  # the benchmark's H by default
    with pytest.raises(ValueError, match="--transport 'tcp' not in"):
        measured_inputs(str(path), "tcp")
    del_top = json.loads(path.read_text())
    for k in ("step_s", "transport"):
        del del_top[k]
    path.write_text(json.dumps(del_top))
    with pytest.raises(ValueError, match="choose one with --transport"):
        measured_inputs(str(path))
    assert measured_inputs(str(path), "mpi", nbytes=1e6).points == [(2, 1e6, 0.5)]


def test_report_and_project_without_matplotlib_write_tables_and_say_so(tmp_path):
    """matplotlib is an optional extra: without it both commands still write their tables
    and print one line about the missing plot (no traceback)."""
    write_run(tmp_path, "weak-sync-n1", strategy="sync", workers=1, ips=10.0, mode="weak")
    write_run(tmp_path, "weak-sync-n2", strategy="sync", workers=2, ips=19.0, mode="weak")
    blocker = ("import sys, runpy; sys.modules['matplotlib'] = None; "
               "sys.argv = ['launch.scaling'] + sys.argv[1:]; "
               "runpy.run_module('launch.scaling', run_name='__main__')")
    out = tmp_path / "proj"
    for args in (["report", tmp_path],
                 ["project", "--compute-s", "0.1", "--allreduce-s", "0.05", "--bytes", "1e6",
                  "--workers", "8..64", "--out", out]):
        proc = subprocess.run([sys.executable, "-c", blocker, *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "matplotlib is not installed" in proc.stdout and "Traceback" not in proc.stderr
    assert (tmp_path / "scaling_report.md").exists() and (tmp_path / "scaling_report.csv").exists()
    assert not (tmp_path / "scaling_report.png").exists()
    assert (tmp_path / "proj.md").exists() and not (tmp_path / "proj.png").exists()


def test_sweep_resubmission_skips_finished_and_active_runs_and_resumes_failed_ones(
        tmp_path, monkeypatch):
    """Re-running a sweep: a finished run is skipped, a run whose job is still queued is
    skipped, a run that died after a checkpoint (or was preempted) is resubmitted with
    --resume, an untouched one plainly (sbatch and scontrol replaced by recorders)."""
    from toolkit.scaling import sweep
    cfg = SweepConfig(workers=[1], batch_size=16, out=str(tmp_path), modes=["weak"],
                      strategies=["sync", "dasgd"], train_args=["--model", "small_cnn"])
    jobs = {j.strategy: j for j in plan(cfg)}
    calls, states = [], {"41": "PENDING", "42": "FAILED"}
    monkeypatch.setattr(sweep, "submit", lambda argv, **kw: calls.append(argv) or "77")
    monkeypatch.setattr(sweep, "job_state", lambda job_id, **kw: (states[job_id], ""))

    def marker(job, job_id):
        os.makedirs(job.run_dir, exist_ok=True)
        with open(os.path.join(job.run_dir, sweep.MARKER), "w") as f:
            json.dump({"job_id": job_id}, f)

    marker(jobs["sync"], "41")  # still pending: leave it alone
    marker(jobs["dasgd"], "42")  # failed after writing a checkpoint
    os.makedirs(os.path.join(jobs["dasgd"].run_dir, "checkpoints"))
    open(os.path.join(jobs["dasgd"].run_dir, "checkpoints", "ckpt-00000010.pt"), "w").close()
    done = sweep.submit_all(list(jobs.values()), log=lambda *a: None)
    assert [j.strategy for j, _ in done] == ["dasgd"]
    assert calls[-1][-1] == "--resume" and calls[-1][:-1] == jobs["dasgd"].argv

    states["41"] = "COMPLETED"  # finished, with a summary: never resubmitted
    with open(os.path.join(jobs["sync"].run_dir, "summary.json"), "w") as f:
        json.dump({"stopped_by": None}, f)
    with open(os.path.join(jobs["dasgd"].run_dir, "summary.json"), "w") as f:
        json.dump({"stopped_by": "SIGUSR1"}, f)  # preempted: resume it
    states["77"] = "PREEMPTED"
    calls.clear()
    done = sweep.submit_all(list(jobs.values()), log=lambda *a: None)
    assert [j.strategy for j, _ in done] == ["dasgd"] and calls[0][-1] == "--resume"
