"""Where a rank runs: its device and how many CPU threads it may use."""
import os

import torch


def resolve_device(name, local_rank):
    """--device: auto = this rank's GPU (local rank modulo the visible GPUs) when CUDA is
    available, else the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to this process "
                         f"(torch {torch.__version__} reports none)")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def default_threads(ranks_on_node):
    """OMP_NUM_THREADS when the launcher set it (SLURM templates do), else the cores this
    process may run on (cgroups/affinity, not the whole node) shared by the node's ranks."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, len(os.sched_getaffinity(0)) // ranks_on_node)
