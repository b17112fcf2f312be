"""The device a benchmark runs on (--device cpu|cuda), and step timing that holds on a GPU.

CUDA kernels run asynchronously: a host clock read right after a step measures the kernel
launches, not the work. On a GPU a step is therefore timed with CUDA events on the current
stream, after waiting for the work queued before it; on the CPU with perf_counter.
"""
import sys
import time

import torch

DEVICES = ("cpu", "cuda")


def exit_bad_input(message):
    """One line on stderr and exit status 2 (bad input), no traceback."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def benchmark_device(name, *, needs_cuda_kernels=False, local_rank=0):
    """torch.device for --device `name` (cuda: this local rank's GPU, made the current one),
    or exit 2 with one line when it cannot run here."""
    check_device(name, needs_cuda_kernels=needs_cuda_kernels)
    if name == "cpu":
        return torch.device("cpu")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def check_device(name, *, needs_cuda_kernels=False):
    """Exit 2 with one line unless --device `name` can run here; creates no CUDA context, so a
    launcher can check before it starts its ranks.

    needs_cuda_kernels: the benchmark runs toolkit._C's ops, so on a GPU the extension must
    have been built with CUDA (scripts/cuda_build.sh), not the CPU build."""
    if name not in DEVICES:
        exit_bad_input(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu":
        return
    if torch.version.cuda is None:
        exit_bad_input(f"--device cuda: torch {torch.__version__} is a CPU build (the CUDA "
                       "stack: scripts/gpu_check.sh)")
    if not torch.cuda.is_available():
        exit_bad_input("--device cuda: no CUDA GPU is visible to this process")
    if needs_cuda_kernels:
        import toolkit._C as ext
        if not ext.with_cuda:
            exit_bad_input(f"--device cuda: {ext.__file__} was built without CUDA "
                           "(scripts/cuda_build.sh builds it with CUDA)")


def timed(fn, device):
    """Seconds `fn()` takes on `device` (its result is dropped)."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3
