"""Pure-PyTorch reference of the invariance layer, written from the spec (shared/spec/
invariance-layer.md) independently of the C++ ops: explicit F.unfold patches, the coupled
Newton-Schulz loop as matrix products, einsum folding.  The tests compare the extension
against it, and the layer benchmark uses it as the "pure-PyTorch layer" baseline.
"""
import torch
import torch.nn.functional as F
from torch import nn


def sample_norm(x, dims, eps):
    flat = x.reshape(*x.shape[: x.dim() - dims], -1)
    mean = flat.mean(-1, keepdim=True)
    std = flat.std(-1, keepdim=True)
    return ((flat - mean) / (std + eps)).reshape(x.shape)


def local_stats(x, window, rf_eps=1.0):
    n, c, h, w = x.shape
    ones = torch.ones(1, 1, window, window, dtype=x.dtype, device=x.device)
    r = window // 2
    box = lambda t: F.conv2d(t, ones, padding=r)  # noqa: E731
    count = box(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)) * c
    mean = box(x.sum(1, keepdim=True)) / count
    var = box((x * x).sum(1, keepdim=True)) / count - mean * mean
    return mean, torch.sqrt(torch.clamp(var, min=0)) + rf_eps


def conv_vectors(xhat, kernel, padding, dilation, stride, groups, block):
    """List (one per group) of the sampled im2col vectors, shape (M, d)."""
    n, c, h, w = xhat.shape
    cg = c // groups
    blocks = cg // block
    if kernel == (1, 1):
        rows = xhat.permute(0, 2, 3, 1).reshape(-1, c)[:: stride[0] * stride[1]]
        width = cg
    else:
        cols = F.unfold(xhat, kernel, dilation=dilation, padding=padding, stride=stride)
        rows = cols.transpose(1, 2).reshape(-1, c * kernel[0] * kernel[1])
        width = cg * kernel[0] * kernel[1]
    d = width // blocks
    out = []
    for g in range(groups):
        part = rows[:, g * width:(g + 1) * width]
        out.append(part.reshape(-1, d, blocks).transpose(1, 2).reshape(-1, d))
    return out


def moments(vectors):
    mean = torch.stack([v.mean(0) for v in vectors])
    second = torch.stack([v.t() @ v / v.shape[0] for v in vectors])
    return mean, second


def newton_schulz(sigma, n_iter):
    """Coupled Newton-Schulz: Y0 = S/||S||_F, Z0 = I; T = (3I - ZY)/2, Y <- YT, Z <- TZ."""
    norm = sigma.square().sum((-2, -1), keepdim=True).sqrt()
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    y, z = sigma / norm, eye
    for _ in range(n_iter):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return z / norm.sqrt()


def whitening(mean, second, eps, n_iter):
    d = mean.shape[-1]
    eye = torch.eye(d, dtype=mean.dtype, device=mean.device)
    sigma = second - mean.unsqueeze(-1) * mean.unsqueeze(-2) + eps * eye
    return newton_schulz(sigma, n_iter)


def fold_conv(weight, whiten, mean, bias, groups):
    out = weight.shape[0]
    per = out // groups
    d = whiten.shape[-1]
    ws, bs = [], []
    for g in range(groups):
        w = weight[g * per:(g + 1) * per].reshape(per, d, -1)       # (o, a, g) unfold order
        wt = torch.einsum("ab,obg->oag", whiten[g], w)
        bs.append(bias[g * per:(g + 1) * per] - torch.einsum("oag,a->o", wt, mean[g]))
        ws.append(wt.reshape(weight[g * per:(g + 1) * per].shape))
    return torch.cat(ws), torch.cat(bs)


def fold_linear(weight, whiten, mean, bias):
    b = whiten.shape[-1]
    wt = (weight.reshape(-1, b) @ whiten[0]).reshape(weight.shape)
    return wt, bias - wt.reshape(weight.shape[0], -1, b).sum(1) @ mean[0]


def _copy_layer(ref, layer, options):
    """The reference takes the layer's options, parameters and running buffers."""
    for name in options:
        setattr(ref, name, getattr(layer, name))
    ref.weight = nn.Parameter(layer.weight.detach().clone())
    ref.bias = nn.Parameter(layer._bias_or_zeros().detach().clone())
    ref.register_buffer("running_mean", layer.running_mean.clone())
    ref.register_buffer("running_whitening", layer.running_whitening.clone())


class _RefBase(nn.Module):
    def _stats(self, mean, second):
        if self.training:
            whiten = whitening(mean, second, self.eps, self.n_iter)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_whitening.mul_(1 - m).add_(m * whiten.detach())
            return mean, whiten
        return self.running_mean, self.running_whitening

    @classmethod
    def like(cls, layer):
        """A reference layer with the configuration, parameters and buffers of `layer`."""
        ref = cls(layer)
        ref.load_state_dict(layer.state_dict(), strict=False)
        return ref.to(layer.weight.device)


class RefInvConv2d(_RefBase):
    def __init__(self, layer):
        super().__init__()
        _copy_layer(self, layer, ("kernel_size", "stride", "padding", "dilation", "groups",
                                  "block", "sampling_stride", "eps", "n_iter", "momentum",
                                  "norm", "window"))

    def forward(self, x):
        local = None
        if self.norm == "sample":
            xhat = sample_norm(x, 3, self.eps)
        elif self.norm == "local":
            local = local_stats(x, self.window)
            xhat = (x - local[0]) / local[1]
        else:
            xhat = x
        mean = second = None
        if self.training:
            sample = (self.sampling_stride * self.stride[0], self.sampling_stride * self.stride[1])
            mean, second = moments(conv_vectors(xhat, self.kernel_size, self.padding,
                                                self.dilation, sample, self.groups, self.block))
        mean, whiten = self._stats(mean, second)
        w, b = fold_conv(self.weight, whiten, mean, self.bias, self.groups)
        if local is None:
            return F.conv2d(xhat, w, b, self.stride, self.padding, self.dilation, self.groups)
        out = F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)
        m, s = (F.interpolate(t, size=out.shape[-2:], mode="nearest") for t in local)
        return out / s - (m / s) * w.sum((1, 2, 3)).view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


class RefInvLinear(_RefBase):
    def __init__(self, layer):
        super().__init__()
        _copy_layer(self, layer, ("block", "eps", "n_iter", "momentum", "norm"))

    def forward(self, x):
        xhat = sample_norm(x, 1, self.eps) if self.norm == "sample" else x
        mean = second = None
        if self.training:
            mean, second = moments([xhat.reshape(-1, self.block)])
        mean, whiten = self._stats(mean, second)
        w, b = fold_linear(self.weight, whiten, mean, self.bias)
        return F.linear(xhat, w, b)


def to_reference(model):
    """Replaces every InvConv2d / InvLinear of `model` (in place) by its reference twin."""
    from toolkit.invariance import InvConv2d, InvLinear
    for name, child in model.named_children():
        if isinstance(child, InvConv2d):
            setattr(model, name, RefInvConv2d.like(child))
        elif isinstance(child, InvLinear):
            setattr(model, name, RefInvLinear.like(child))
        else:
            to_reference(child)
    return model


__all__ = ["RefInvConv2d", "RefInvLinear", "to_reference", "sample_norm", "local_stats",
           "conv_vectors", "moments", "newton_schulz", "whitening", "fold_conv", "fold_linear"]
