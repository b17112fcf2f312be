"""GPU readiness, checked without a GPU: the GPU scripts are valid shell, the GPU-only commands
refuse cleanly here (one line `error: ...`, exit 2), and the tools scripts/gpu_check.sh relies
on (the CUDA build checker, the summary) read real inputs right."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_SCRIPTS = ["scripts/gpu_check.sh", "scripts/cuda_build.sh", "scripts/cuda_horovod.sh",
                 "scripts/cuda_common.sh"]
CONTRACT = ["local_stats_backward", "local_stats_forward", "ns_divided_differences",
            "ns_scalar_map", "sample_norm_backward", "sample_norm_forward", "sampled_patches",
            "sampled_patches_backward"]
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi"),
                                 reason="a GPU is present: the no-GPU refusal cannot be seen")


def run(argv, **kw):
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts",
                                                                     name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_script_is_valid_bash(script):
    proc = run(["bash", "-n", script])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (Debian package shellcheck)")
def test_scripts_pass_shellcheck():
    proc = run(["shellcheck", "-x", *SHELL_SCRIPTS])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_one_error_line(proc, starts):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@no_gpu_here
def test_gpu_check_refuses_without_a_gpu_before_installing_anything(tmp_path):
    out = tmp_path / "out"
    proc = run(["bash", "scripts/gpu_check.sh", str(out)],
               env={**os.environ, "CUDA_VENV": str(tmp_path / "venv")})
    assert_one_error_line(proc, "error: no NVIDIA GPU here")
    assert proc.stdout == ""
    assert not out.exists() and not (tmp_path / "venv").exists()


def test_gpu_check_refuses_extra_arguments():
    proc = run(["bash", "scripts/gpu_check.sh", "a", "b"])
    assert_one_error_line(proc, "error: usage: bash scripts/gpu_check.sh")


@no_gpu_here
@pytest.mark.parametrize("module", ["launch.bench_layer", "launch.bench_comm"])
def test_benchmark_device_cuda_refuses_without_a_gpu(module, tmp_path):
    out = tmp_path / "bench.json"
    proc = run([sys.executable, "-m", module, "--device", "cuda", "--json", str(out)])
    assert_one_error_line(proc, "error: --device cuda: ")
    assert not out.exists()


@no_gpu_here
def test_benchmark_device_refusal_names_the_reason(capsys):
    from experiments.bench.device import benchmark_device
    with pytest.raises(SystemExit) as exc:
        benchmark_device("cuda")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    reason = "is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
    assert err.count("\n") == 1 and reason in err


def test_benchmark_timing_on_the_cpu_measures_the_call():
    from experiments.bench.device import benchmark_device, timed
    device = benchmark_device("cpu")
    x = torch.randn(256, 256)
    assert timed(lambda: x @ x, device) > 0


def test_the_cuda_contract_is_the_list_of_cuda_launchers():
    """The checker requires a CUDA registration for every kernel of backend_kernels.inc; each
    of them has a .cu launcher (cuda/launchers.h), so none is required without a kernel."""
    names = load_script("check_cuda_build").contract_kernels()
    with open(os.path.join(REPO, "toolkit", "csrc", "cuda", "launchers.h")) as f:
        launchers = sorted(set(re.findall(r"^cudaError_t (\w+)\(", f.read(), re.M)))
    assert names == CONTRACT == launchers


def test_build_checker_flags_a_build_without_cuda_kernels(tmp_path):
    """Against the CPU build here: the checker reports every missing CUDA registration (and
    no false alarm about the CPU kernels), exit 1."""
    report = tmp_path / "check.json"
    proc = run([sys.executable, "scripts/check_cuda_build.py", "--json", str(report)],
               env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["with_cuda"] is False
    missing = sorted(f.split("::")[1].split()[0] for f in data["failures"]
                     if f.endswith("has no CUDA kernel"))
    assert missing == CONTRACT
    assert not any("no CPU kernel" in f for f in data["failures"])
    for name in CONTRACT:
        assert "CPU" in data["ops"][f"invariance::{name}"]
    assert "FAIL: invariance::sample_norm_forward has no CUDA kernel" in proc.stdout


def write_gpu_check_outputs(out, skipped):
    """What gpu_check.sh's steps leave behind after a run on a 2-GPU node."""
    (out / "steps.tsv").write_text("".join(f"{name}\t0\t{s}\n" for name, s in
                                           [("build", 310), ("horovod", 420),
                                            ("cuda_tests", 40), ("bench", 25), ("dasgd", 60)]))
    (out / "cuda_tests.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" '
        f'failures="0" skipped="{skipped}" tests="12" time="30.1"></testsuite></testsuites>')
    (out / "dasgd").mkdir()
    (out / "dasgd" / "summary.json").write_text(json.dumps(
        {"world_size": 2, "device": "cuda:0", "test_acc": 0.973, "images_per_s": 5100.0,
         "step_s": 0.01, "comm_wait_s": 0.2, "wall_s": 35.0, "model": "small_cnn"}))


@pytest.mark.parametrize("skipped, ok", [(0, True), (2, False)])
def test_gpu_summary_reads_the_step_outputs(tmp_path, skipped, ok):
    write_gpu_check_outputs(tmp_path, skipped)
    proc = run([sys.executable, "scripts/gpu_summary.py", str(tmp_path),
                "--gpus", "NVIDIA A100-SXM4-80GB, 8.0, 550.54\nNVIDIA A100-SXM4-80GB, 8.0, 550.54",
                "--arch-list", "8.0;9.0+PTX"])
    assert proc.returncode == (0 if ok else 1), proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is ok and len(summary["gpus"]) == 2
    assert summary["cuda_tests"]["passed"] == 12 - skipped
    assert summary["dasgd"]["world_size"] == 2 and summary["dasgd"]["test_acc"] == 0.973
    assert summary["steps"]["horovod"]["seconds"] == 420
    if not ok:
        assert "skipped on a GPU machine" in summary["notes"]["cuda_tests"]


def test_gpu_summary_without_the_run_directory_is_one_error_line(tmp_path):
    proc = run([sys.executable, "scripts/gpu_summary.py", str(tmp_path / "missing")])
    assert_one_error_line(proc, "error: cannot summarize")
