"""InvConv2d and InvLinear: Conv2d / Linear with the invariance transform folded in.

forward = scale-invariance transform of the input (norm) -> whitening statistics of the
sampled im2col patches (training refresh steps) or the running averages (eval, and the stale
training steps of stats_every > 1 or freeze) -> whitening folded into the weights -> one
ordinary convolution / linear map.  See docs/invariance-layer.md.
"""
import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ops, options
from .ops import _C
from .sync import average_mean, average_moments, new_name

LOW_PRECISION = (torch.float16, torch.bfloat16)
RF_EPS = 1.0  # added to the local std (norm="local")


@contextlib.contextmanager
def _small_math_threads(device):
    """The (d x d) math in Python under the extension's thread policy: one thread on an
    oversubscribed node, where every parallel region of a 576^2 elementwise op waits for a
    descheduled thread (toolkit/csrc/small_math_threads.h; set_small_math_threads)."""
    threads = torch.get_num_threads()
    wanted = _C.small_math_threads() if device.type == "cpu" else threads
    if wanted >= threads:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Whitening(nn.Module):
    """Statistics, running buffers, the refresh schedule and the eval-mode cache shared by
    both layers.  num_batches_tracked counts training steps; it is the schedule's phase, so a
    state_dict round trip or a resume continues the schedule exactly."""

    def _setup(self, groups, d, eps, n_iter, momentum, norm, freeze, sync, method,
               stats_every, refresh):
        options.common(eps, n_iter, momentum, norm, freeze, sync, method, stats_every,
                       refresh=refresh)
        self.eps, self.n_iter, self.momentum = float(eps), int(n_iter), float(momentum)
        self.norm, self.freeze, self.sync, self.method = norm, freeze, sync, method
        self.stats_every, self.refresh = int(stats_every), refresh
        self.warm_start = options.warm_start_steps(self.stats_every, self.momentum)
        self.register_buffer("running_mean", torch.zeros(groups, d))
        self.register_buffer("running_whitening", torch.eye(d).repeat(groups, 1, 1))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        if refresh == "last":
            # the last refresh step's batch statistics, for the stale steps that follow it;
            # only this rule has them, so every other state_dict is what it always was
            self.register_buffer("refresh_mean", torch.zeros(groups, d))
            self.register_buffer("refresh_whitening", torch.eye(d).repeat(groups, 1, 1))
        self._sync_name = new_name()
        self._eval_cache = None

    def _use_batch_statistics(self):
        if not self.training:
            return False
        if self.stats_every == 1 and not self.freeze:
            return True
        return options.refreshes_statistics(int(self.num_batches_tracked), self.stats_every,
                                            self.warm_start, self.freeze)

    def _whitening(self, mean, second):
        """Sigma = S - mu mu^T + eps I  ->  D = Newton-Schulz inverse square root."""
        if self.sync:
            mean, second = average_moments(mean, second, self._sync_name)
        whitening = self._inverse_sqrt(mean, second)
        with torch.no_grad(), _small_math_threads(mean.device):
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype),
                                               alpha=m)
            self.running_whitening.mul_(1 - m).add_(
                whitening.detach().to(self.running_whitening.dtype), alpha=m)
            if self.refresh == "last":
                self.refresh_mean.copy_(mean.detach())
                self.refresh_whitening.copy_(whitening.detach())
        return mean, whitening

    def _stale_statistics(self, xhat, moments_fn):
        """(mean, whitening) a stale training step folds, by the refresh rule. None of them
        differentiates through the statistics; "center" differentiates through the mean."""
        if self.refresh == "ema":
            return self.running_mean, self.running_whitening
        if self.refresh == "last":
            return self.refresh_mean, self.refresh_whitening
        if self.refresh == "center":
            mean = self._batch_mean(xhat)
            if self.sync:
                mean = average_mean(mean, self._sync_name + ".mean")
            return mean, self.running_whitening
        if self.refresh == "sampled":  # fewer rows, the gradient of a refresh step
            mean, second = self._sparse_moments(xhat)
            if self.sync:
                mean, second = average_moments(mean, second, self._sync_name)
            return mean, self._inverse_sqrt(mean, second)
        with torch.no_grad():  # "batch": this batch's statistics, fixed in the backward
            mean, second = moments_fn(xhat.detach())
            if self.sync:
                mean, second = average_moments(mean, second, self._sync_name)
            return mean, self._inverse_sqrt(mean, second)

    def _inverse_sqrt(self, mean, second):
        """Sigma = S - mu mu^T + eps I  ->  D = Newton-Schulz inverse square root."""
        d = mean.shape[-1]
        with _small_math_threads(mean.device):
            eye = torch.eye(d, dtype=mean.dtype, device=mean.device)
            # one outer-product update: its backward is two (d, d) x (d, 1) products
            sigma = torch.baddbmm(second + self.eps * eye, mean.unsqueeze(-1),
                                  mean.unsqueeze(-2), alpha=-1)
        return ops.inv_sqrt(sigma, self.n_iter, options.resolve_method(self.method,
                                                                       sigma.device))

    def _bias_or_zeros(self):
        if self.bias is not None:
            return self.bias
        return torch.zeros(self.weight.shape[0], dtype=self.weight.dtype,
                           device=self.weight.device)

    def _folded(self, xhat, moments_fn):
        """(W~, b~) for this forward: batch statistics, frozen buffers, or the eval cache."""
        if self._use_batch_statistics():
            mean, whitening = self._whitening(*moments_fn(xhat))
            return self._fold(whitening, mean)
        if self.training:  # a stale step
            mean, whitening = self._stale_statistics(xhat, moments_fn)
            return self._fold(whitening, mean)
        needs_graph = torch.is_grad_enabled() and any(
            p.requires_grad for p in (self.weight, self.bias) if p is not None)
        if needs_graph:  # eval with gradients for the weights
            return self._fold(self.running_whitening, self.running_mean)
        tracked = [self.weight, self.running_mean, self.running_whitening]
        if self.bias is not None:
            tracked.append(self.bias)
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tracked)
        if self._eval_cache is None or self._eval_cache[0] != key:
            with torch.no_grad():
                self._eval_cache = (key, self._fold(self.running_whitening, self.running_mean))
        return self._eval_cache[1]

    def _fold(self, whitening, mean):
        dtype = self.weight.dtype
        return ops.fold_weights(self.weight, whitening.to(dtype), mean.to(dtype),
                                self._bias_or_zeros(), self._fold_groups, self._interleaved)

    def _count(self):
        if self.training:
            self.num_batches_tracked += 1

    def _load_from_state_dict(self, *args, **kwargs):
        self._eval_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode=True):
        self._eval_cache = None
        return super().train(mode)


def _stats_input(x):
    """Statistics are always computed in fp32 (or fp64): upcast fp16/bf16 inputs."""
    return x.float() if x.dtype in LOW_PRECISION else x


def _output_cast(x, out_dtype, *tensors):
    """Outside autocast a low-precision input gives a low-precision output."""
    if out_dtype in LOW_PRECISION and not torch.is_autocast_enabled(x.device.type):
        return tuple(t.to(out_dtype) if t is not None else None for t in tensors)
    return tensors


class InvConv2d(_Whitening):
    """Drop-in replacement for Conv2d (+ BatchNorm) with the invariance transform."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, block=64, sampling_stride=3,
                 stats_budget=options.DEFAULT_STATS_BUDGET,
                 eps=1e-5, n_iter=5, momentum=0.1, norm="sample", freeze=False, sync=False,
                 method="auto", stats_every=1, refresh="ema"):
        super().__init__()
        self.in_channels = options.positive_int("in_channels", in_channels)
        self.out_channels = options.positive_int("out_channels", out_channels)
        self.kernel_size = options.pair("kernel_size", kernel_size, 1)
        self.stride = options.pair("stride", stride, 1)
        self.padding = options.pair("padding", padding, 0)
        self.dilation = options.pair("dilation", dilation, 1)
        self.groups = options.positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        options.flag("bias", bias)
        options.positive_int("block", block)
        stride_choice = options.sampling_stride(sampling_stride, stats_budget)
        self.stats_budget = float(stats_budget)
        per_group = in_channels // groups
        # grouped conv: one covariance per group, block = the group's channels
        self.block = options.block_size(block, per_group) if groups == 1 else per_group
        self.d = self.block * self.kernel_size[0] * self.kernel_size[1]
        # "auto": the smallest stride whose statistics fit the budget (cost model in the docs)
        self.sampling_stride = stride_choice if stride_choice != "auto" else \
            options.budget_sampling_stride(self.kernel_size, self.block,
                                           out_channels // groups, self.stats_budget)
        self._fold_groups, self._interleaved = groups, True
        self.weight = nn.Parameter(torch.empty(out_channels, per_group, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._setup(groups, self.d, eps, n_iter, momentum, norm, freeze, sync, method,
                    stats_every, refresh)
        self.window = options.local_window(self.kernel_size, self.dilation)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, block={self.block}, "
                f"sampling_stride={self.sampling_stride}, n_iter={self.n_iter}, "
                f"stats_every={self.stats_every}, refresh={self.refresh}, norm={self.norm}, "
                f"freeze={self.freeze}, sync={self.sync}")

    def _moments(self, xhat):
        # the sampled grid: every sampling_stride-th output position of the conv
        sample_stride = (self.sampling_stride * self.stride[0],
                         self.sampling_stride * self.stride[1])
        return ops.im2col_moments(xhat, self.kernel_size, self.padding, self.dilation,
                                  sample_stride, self.groups, self.block)

    def _batch_mean(self, xhat):
        """Mean (groups, d) of the sampled patch vectors, without their second moment."""
        sample_stride = (self.sampling_stride * self.stride[0],
                         self.sampling_stride * self.stride[1])
        return ops.sampled_patch_mean(xhat, self.kernel_size, self.padding, self.dilation,
                                      sample_stride, self.groups, self.block)

    def _sparse_moments(self, xhat):
        """The moments on a grid twice as coarse in both directions (1/SPARSE_ROWS rows)."""
        step = math.isqrt(options.SPARSE_ROWS)
        return ops.im2col_moments(xhat, self.kernel_size, self.padding, self.dilation,
                                  (step * self.sampling_stride * self.stride[0],
                                   step * self.sampling_stride * self.stride[1]),
                                  self.groups, self.block)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"InvConv2d expects input (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            xs = _stats_input(x)
            if self.norm == "sample":
                xhat, local = ops.sample_norm(xs, 3, self.eps), None
            elif self.norm == "local":
                local = ops.local_stats(xs, self.window, RF_EPS)
                xhat = (xs - local[0]) / local[1]
            else:
                xhat, local = xs, None
            weight, bias = self._folded(xhat, self._moments)
        self._count()
        conv_in = xs if local is not None else xhat
        conv_in, weight, bias = _output_cast(x, x.dtype, conv_in, weight, bias)
        if local is None:
            return F.conv2d(conv_in, weight, bias, self.stride, self.padding, self.dilation,
                            self.groups)
        return self._local_output(conv_in, weight, bias, *local)

    def _local_output(self, x, weight, bias, mean, std):
        """conv(x, W~) / s - (m / s) sum(W~) + b~, with m and s taken on the output grid."""
        out = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        if mean.shape[-2:] != out.shape[-2:]:
            mean = F.interpolate(mean, size=out.shape[-2:], mode="nearest")
            std = F.interpolate(std, size=out.shape[-2:], mode="nearest")
        inv = (1.0 / std).to(out.dtype)
        wsum = weight.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        return out * inv - (mean.to(out.dtype) * inv) * wsum + bias.view(1, -1, 1, 1)


class InvLinear(_Whitening):
    """Drop-in replacement for Linear on (N, F) or (N, T, F) with the invariance transform."""

    def __init__(self, in_features, out_features, bias=True, *, block=None, eps=1e-5, n_iter=5,
                 momentum=0.1, norm="sample", freeze=False, sync=False, method="auto",
                 stats_every=1, refresh="ema"):
        super().__init__()
        self.in_features = options.positive_int("in_features", in_features)
        self.out_features = options.positive_int("out_features", out_features)
        options.flag("bias", bias)
        if norm == "local":
            raise ValueError("norm='local' needs a spatial input (InvConv2d); InvLinear takes "
                             "'sample' or 'none'")
        if norm == "sample" and in_features < 2:
            raise ValueError("in_features must be >= 2 for norm='sample' (the std of one "
                             "feature is undefined)")
        limit = 512 if block is None else options.positive_int("block", block)
        self.block = options.block_size(limit, in_features)
        self._fold_groups, self._interleaved = 1, False
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self._setup(1, self.block, eps, n_iter, momentum, norm, freeze, sync, method,
                    stats_every, refresh)
        self.reset_parameters()

    reset_parameters = InvConv2d.reset_parameters

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, block={self.block}, "
                f"n_iter={self.n_iter}, stats_every={self.stats_every}, refresh={self.refresh}, "
                f"norm={self.norm}, freeze={self.freeze}, sync={self.sync}")

    def _moments(self, xhat):
        return ops.chunk_moments(xhat, self.block)

    def _sparse_moments(self, xhat):
        """The moments of every SPARSE_ROWS-th row (token or sample)."""
        return ops.chunk_moments(xhat.reshape(-1, xhat.shape[-1])[::options.SPARSE_ROWS],
                                 self.block)

    def _batch_mean(self, xhat):
        """Mean (1, B) of the contiguous B-chunks of the features."""
        return xhat.reshape(-1, self.block).mean(dim=0, keepdim=True)

    def forward(self, x):
        if x.dim() not in (2, 3) or x.shape[-1] != self.in_features:
            raise ValueError(f"InvLinear expects input (N, {self.in_features}) or "
                             f"(N, T, {self.in_features}), got {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            xs = _stats_input(x)
            xhat = ops.sample_norm(xs, 1, self.eps) if self.norm == "sample" else xs
            weight, bias = self._folded(xhat, self._moments)
        self._count()
        xhat, weight, bias = _output_cast(x, x.dtype, xhat, weight, bias)
        return F.linear(xhat, weight, bias)
