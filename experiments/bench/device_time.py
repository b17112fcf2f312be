"""Device-time compute: a rank's forward/backward costs a given time on an emulated GPU
without using the host's CPU, while everything the host does on a GPU node stays real.

On a GPU node the forward and backward run on the GPU; the CPU only launches kernels and
drives communication (Horovod's background thread, NCCL/MPI/TCP progress, DDP's reducer).
Emulating several such nodes on one small host with real CPU compute measures how the
ranks' compute and their transfers fight over the same cores, not a cluster. Here the
compute sleeps instead (a sleeping thread leaves its core to the communication threads), and
the rest is the real thing:

- the backward is a real autograd pass over a graph with one node per layer, in reverse
  layer order: each node waits its share of the backward time, then hands its layer's
  parameters their gradients through autograd's AccumulateGrad, so Horovod's per-parameter
  hooks (`sync`) and DDP's bucket hooks fire layer by layer, spread over the backward as on
  a GPU, and their allreduces overlap the rest of the backward as they would there;
- gradients have the real model's shapes and dtypes (cheap constant values);
- the optimizer step, DaSGD's copy and merge, PostLocalSGD's averager run on the host CPU.

Not modelled: the PCIe copies between GPU and host memory (with NCCL there are none for
gradients; with MPI over TCP a GPU rank stages them), NCCL's own GPU kernels and streams,
kernel-launch overhead, and the optimizer and the DaSGD merge running as GPU kernels (here
they run on the CPU, which makes their host cost an upper bound of a GPU node's).

`--compute device:STEP_MS` of the step benchmarks selects this; the forward takes
FORWARD_SHARE of STEP_MS, the backward the rest, split equally between the layers that hold
parameters.
"""
import re
import time

import torch

FORWARD_SHARE = 1 / 3  # backward is about twice the forward's work on a GPU
GRADIENT_VALUE = 1e-3  # cheap and harmless: the weights move slowly and stay finite
_COMPUTE = re.compile(r"^(?:real|device:(\d+(?:\.\d+)?))$")


def parse_compute(text):
    """'real' -> None; 'device:12.5' -> 0.0125 (seconds per step); ValueError otherwise."""
    match = _COMPUTE.match(str(text).strip())
    if not match:
        raise ValueError(f"--compute takes `real` or `device:STEP_MS` (e.g. device:10), "
                         f"got {text!r}")
    return None if match.group(1) is None else float(match.group(1)) / 1000


class _Wait(torch.autograd.Function):
    """Identity whose backward first sleeps: one layer's share of the device's backward."""

    @staticmethod
    def forward(ctx, value, seconds):
        ctx.seconds = seconds
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.seconds)
        return grad, None


def layer_groups(model):
    """[[parameter, ...] per module that holds parameters directly], in forward order."""
    groups = []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            groups.append(own)
    return groups


class DeviceTimeModel:
    """Stands in for `model` in a step: forward(x) sleeps the forward's device time and
    returns a scalar whose backward behaves as described above. Call it where the model's
    forward and the loss would be; `.backward()` the result. (A plain object, not a module:
    it must not become part of the model's state.)"""

    def __init__(self, model, step_s):
        self.step_s = step_s
        self.groups = layer_groups(model)
        self.weights = [[torch.full_like(p, GRADIENT_VALUE) for p in g] for g in self.groups]

    def forward(self, x=None):
        time.sleep(self.step_s * FORWARD_SHARE)
        per_layer = self.step_s * (1 - FORWARD_SHARE) / max(1, len(self.groups))
        # Built in forward order: autograd runs the nodes created last first, so the last
        # layer's wait and gradients come first, as in a real backward.
        total = None
        for params, weights in zip(self.groups, self.weights):
            part = sum((p * w).sum() for p, w in zip(params, weights))
            part = _Wait.apply(part, per_layer)
            total = part if total is None else total + part
        return total


def device_time_forward(model, step_s):
    """Replace `model.forward` (this instance only) by the device-time surrogate, so that
    wrappers that call the model (DDP) run the surrogate too; returns the surrogate."""
    surrogate = DeviceTimeModel(model, step_s)
    model.forward = surrogate.forward
    return surrogate
