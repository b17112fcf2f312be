"""The invariance ops (torch.ops.invariance.*) from the compiled extension toolkit._C.

Importing this module loads the extension (which registers the ops, their CPU/CUDA kernels
and their autograd) and adds the shape functions that fake tensors, torch.compile and
torch.library.opcheck need.  The helpers below are thin, typed entry points for the layer.
"""
import torch

try:
    from toolkit import _C
except ImportError as exc:  # the layer has no Python fallback: say how to build it
    raise ImportError(
        "toolkit._C (the invariance-layer extension) is not built: run "
        "`pip install -e .` or `python setup.py build_ext --inplace` in the repository "
        f"({exc})") from exc

ops = torch.ops.invariance


def patch_grid(height, width, kernel, padding, dilation, stride, batch):
    """Number of sampled rows of the sampled im2col (see PatchGeometry in the C++ code)."""
    if kernel[0] == 1 and kernel[1] == 1:
        step = stride[0] * stride[1]
        return (batch * height * width + step - 1) // step
    eff_h = dilation[0] * (kernel[0] - 1) + 1
    eff_w = dilation[1] * (kernel[1] - 1) + 1
    rows_h = (height + 2 * padding[0] - eff_h) // stride[0] + 1
    rows_w = (width + 2 * padding[1] - eff_w) // stride[1] + 1
    return batch * rows_h * rows_w


# ---- shape functions for fake tensors ----------------------------------------------------

def _register_fakes():
    lib = "invariance::"

    @torch.library.register_fake(lib + "sample_norm_forward")
    def _(x, norm_dims, eps):
        return torch.empty_like(x), x.new_empty(x.shape[: x.dim() - norm_dims])

    @torch.library.register_fake(lib + "sample_norm_backward")
    def _(grad, y, sigma, norm_dims, eps):
        return torch.empty_like(y)

    @torch.library.register_fake(lib + "sampled_patches")
    def _(x, kernel, padding, dilation, stride, groups, block):
        n, c, h, w = x.shape
        rows = patch_grid(h, w, kernel, padding, dilation, stride, n)
        per_group = c // groups
        blocks = per_group // block
        return x.new_empty((groups, rows * blocks, block * kernel[0] * kernel[1]))

    @torch.library.register_fake(lib + "sampled_patches_backward")
    def _(grad, x, kernel, padding, dilation, stride, groups, block):
        return grad.new_empty(x.shape)

    @torch.library.register_fake(lib + "local_stats_forward")
    def _(x, window, rf_eps):
        shape = (x.shape[0], 1, x.shape[2], x.shape[3])
        return x.new_empty(shape), x.new_empty(shape), x.new_empty(shape)

    @torch.library.register_fake(lib + "local_stats_backward")
    def _(grad_mean, grad_std, x, mean, var, window):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "ns_scalar_map")
    def _(eigvals, norm, n_iter):
        return torch.empty_like(eigvals), torch.empty_like(eigvals)

    @torch.library.register_fake(lib + "ns_divided_differences")
    def _(eigvals, norm, n_iter):
        return eigvals.new_empty((eigvals.shape[0], eigvals.shape[1], eigvals.shape[1]))

    # Ops built from ATen in C++ (CompositeExplicitAutograd) get shape functions too, so
    # that fake tensors never run C++ code that re-enters the dispatcher.
    @torch.library.register_fake(lib + "sample_norm")
    def _(x, norm_dims, eps):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "im2col_moments")
    def _(x, kernel, padding, dilation, stride, groups, block):
        d = block * kernel[0] * kernel[1]
        return x.new_empty((groups, d)), x.new_empty((groups, d, d))

    @torch.library.register_fake(lib + "patch_moments")
    def _(patches):
        g, _, d = patches.shape
        return patches.new_empty((g, d)), patches.new_empty((g, d, d))

    @torch.library.register_fake(lib + "patch_moments_backward")
    def _(grad_mean, grad_second, patches):
        return torch.empty_like(patches)

    for name in ("inv_sqrt_newton", "inv_sqrt_spectral", "inv_sqrt_newton_backward",
                 "inv_sqrt_spectral_backward"):
        torch.library.register_fake(lib + name)(
            lambda grad_or_sigma, *rest: torch.empty_like(rest[0] if rest and isinstance(
                rest[0], torch.Tensor) else grad_or_sigma))

    @torch.library.register_fake(lib + "inv_sqrt_newton_forward")
    def _(sigma, n_iter):
        return torch.empty_like(sigma), sigma.new_empty((n_iter, 2, *sigma.shape))

    @torch.library.register_fake(lib + "inv_sqrt_spectral_forward")
    def _(sigma, n_iter):
        return torch.empty_like(sigma), torch.empty_like(sigma), sigma.new_empty(sigma.shape[:2])

    @torch.library.register_fake(lib + "fold_weights")
    def _(weight, whitening, mean, bias, groups, interleaved):
        return torch.empty_like(weight), torch.empty_like(bias)

    @torch.library.register_fake(lib + "fold_weights_backward")
    def _(grad_weight, grad_bias, weight, whitening, mean, folded, groups, interleaved,
          output_mask):
        wanted = [torch.empty_like(t) if need else None
                  for t, need in zip((weight, whitening, mean), output_mask)]
        return (*wanted, torch.empty_like(grad_bias))

    @torch.library.register_fake(lib + "local_stats")
    def _(x, window, rf_eps):
        shape = (x.shape[0], 1, x.shape[2], x.shape[3])
        return x.new_empty(shape), x.new_empty(shape)


_register_fakes()


# ---- entry points ----------------------------------------------------------------------

def sample_norm(x, norm_dims, eps):
    """(x - mean) / (std + eps) over the last `norm_dims` dimensions (unbiased std)."""
    return ops.sample_norm(x, norm_dims, eps)


def im2col_moments(x, kernel, padding, dilation, sample_stride, groups, block):
    """Mean (groups, d) and second moment (groups, d, d) of the im2col vectors sampled every
    sample_stride pixels (the layer's sampling_stride times the conv's stride)."""
    return ops.im2col_moments(x, list(kernel), list(padding), list(dilation),
                              list(sample_stride), groups, block)


class _SampledPatchMean(torch.autograd.Function):
    """Mean of the sampled patch vectors alone: the gather op forward, its scatter op
    backward (the gather has no autograd of its own: im2col_moments' covers it there)."""

    @staticmethod
    def forward(ctx, x, kernel, padding, dilation, stride, groups, block):
        patches = ops.sampled_patches(x, kernel, padding, dilation, stride, groups, block)
        ctx.save_for_backward(x)
        ctx.geometry, ctx.rows = (kernel, padding, dilation, stride, groups, block), \
            patches.shape[1]
        return patches.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_mean):
        x, = ctx.saved_tensors
        grad = (grad_mean / ctx.rows).unsqueeze(1).expand(-1, ctx.rows, -1).contiguous()
        return (ops.sampled_patches_backward(grad, x, *ctx.geometry),) + (None,) * 6


def sampled_patch_mean(x, kernel, padding, dilation, sample_stride, groups, block):
    """Mean (groups, d) of the im2col vectors sampled every sample_stride pixels, without
    their second moment (differentiable in x)."""
    return _SampledPatchMean.apply(x, list(kernel), list(padding), list(dilation),
                                   list(sample_stride), groups, block)


def chunk_moments(x, block):
    """Mean (1, B) and second moment (1, B, B) of the contiguous B-chunks of the features."""
    return ops.chunk_moments(x, block)


def inv_sqrt(sigma, n_iter, method):
    """Newton-Schulz inverse square root of a batch (groups, d, d): 'newton' runs the
    coupled loop (3n matrix products), 'spectral' evaluates the same polynomial through one
    eigendecomposition."""
    if method == "spectral":
        return ops.inv_sqrt_spectral(sigma, n_iter)
    return ops.inv_sqrt_newton(sigma, n_iter)


def fold_weights(weight, whitening, mean, bias, groups, interleaved):
    """(W~, b~): the whitening folded into the weights (docs/invariance-layer.md)."""
    return ops.fold_weights(weight, whitening, mean, bias, groups, interleaved)


def set_small_math_threads(n):
    """Intra-op threads for the layer's d x d math on the CPU (inverse square root, fold):
    0 = auto (the default: one thread when threads per rank x ranks on the node exceed the
    cores this process may use, else all of them), n >= 1 = at most n. The environment
    variable TOOLKIT_SMALL_MATH_THREADS sets the initial value."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"set_small_math_threads: n must be an integer >= 0, got {n!r}")
    _C.set_small_math_threads(n)


def small_math_threads():
    """The number of threads the d x d math would use right now."""
    return _C.small_math_threads()


def local_stats(x, window, rf_eps):
    """Local mean and std (N, 1, H, W) over window x window pixels and all channels."""
    return ops.local_stats(x, window, rf_eps)
