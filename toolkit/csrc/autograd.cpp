// Autograd of the invariance ops, registered once under the Autograd key (every device).
// Each public op is a torch::autograd::Function whose forward and backward call the
// `*_forward` / `*_backward` ops through the dispatcher, so that CPU and CUDA (and fake
// tensors) all take the same path.  Below autograd the public ops run their forward half.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>

#include "invariance.h"

namespace invariance {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> typed(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using IntArr = at::IntArrayRef;

// ---- sample_norm ---------------------------------------------------------------------------

std::tuple<Tensor, Tensor> sample_norm_fw(const Tensor& x, int64_t dims, double eps) {
  static auto h = typed<std::tuple<Tensor, Tensor>(const Tensor&, int64_t, double)>(
      "invariance::sample_norm_forward");
  return h.call(x, dims, eps);
}

struct SampleNorm : public torch::autograd::Function<SampleNorm> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, int64_t dims, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, sigma] = sample_norm_fw(x, dims, eps);
    ctx->save_for_backward({y, sigma});
    ctx->saved_data["dims"] = dims;
    ctx->saved_data["eps"] = eps;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto h = typed<Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, double)>(
        "invariance::sample_norm_backward");
    auto saved = ctx->get_saved_variables();
    auto gx = h.call(grads[0], saved[0], saved[1], ctx->saved_data["dims"].toInt(),
                     ctx->saved_data["eps"].toDouble());
    return {gx, Tensor(), Tensor()};
  }
};

Tensor sample_norm_autograd(const Tensor& x, int64_t dims, double eps) {
  return SampleNorm::apply(x, dims, eps);
}
Tensor sample_norm_plain(const Tensor& x, int64_t dims, double eps) {
  return std::get<0>(sample_norm_fw(x, dims, eps));
}

// ---- im2col_moments ------------------------------------------------------------------------

// The sampled patches X are kept from the forward: the backward needs them for dX = X A.
struct Moments : public torch::autograd::Function<Moments> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, IntArr k, IntArr p,
                               IntArr dl, IntArr sample_stride, int64_t groups, int64_t block) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto patches = typed<Tensor(const Tensor&, IntArr, IntArr, IntArr, IntArr, int64_t,
                                       int64_t)>("invariance::sampled_patches");
    static auto moments = typed<std::tuple<Tensor, Tensor>(const Tensor&)>(
        "invariance::patch_moments");
    auto X = patches.call(x, k, p, dl, sample_stride, groups, block);
    auto [mu, S] = moments.call(X);
    ctx->save_for_backward({x, X});
    ctx->saved_data["k"] = k.vec();
    ctx->saved_data["p"] = p.vec();
    ctx->saved_data["dl"] = dl.vec();
    ctx->saved_data["sample_stride"] = sample_stride.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["block"] = block;
    return {mu, S};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto moments_bwd = typed<Tensor(const Tensor&, const Tensor&, const Tensor&)>(
        "invariance::patch_moments_backward");
    static auto patches_bwd = typed<Tensor(const Tensor&, const Tensor&, IntArr, IntArr, IntArr,
                                           IntArr, int64_t, int64_t)>(
        "invariance::sampled_patches_backward");
    auto& sd = ctx->saved_data;
    auto saved = ctx->get_saved_variables();
    auto gX = moments_bwd.call(grads[0], grads[1], saved[1]);
    auto gx = patches_bwd.call(gX, saved[0], sd["k"].toIntVector(), sd["p"].toIntVector(),
                               sd["dl"].toIntVector(), sd["sample_stride"].toIntVector(),
                               sd["groups"].toInt(), sd["block"].toInt());
    return {gx, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> moments_autograd(const Tensor& x, IntArr k, IntArr p, IntArr dl,
                                            IntArr sample_stride, int64_t groups,
                                            int64_t block) {
  auto out = Moments::apply(x, k, p, dl, sample_stride, groups, block);
  return {out[0], out[1]};
}

// ---- inverse square roots ------------------------------------------------------------------

struct NewtonInvSqrt : public torch::autograd::Function<NewtonInvSqrt> {
  static Tensor forward(AutogradContext* ctx, const Tensor& sigma, int64_t n_iter) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto h = typed<std::tuple<Tensor, Tensor>(const Tensor&, int64_t)>(
        "invariance::inv_sqrt_newton_forward");
    auto [D, trace] = h.call(sigma, n_iter);
    ctx->save_for_backward({sigma, trace});
    ctx->saved_data["n"] = n_iter;
    return D;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto h = typed<Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t)>(
        "invariance::inv_sqrt_newton_backward");
    auto saved = ctx->get_saved_variables();
    return {h.call(grads[0], saved[0], saved[1], ctx->saved_data["n"].toInt()), Tensor()};
  }
};

struct SpectralInvSqrt : public torch::autograd::Function<SpectralInvSqrt> {
  static Tensor forward(AutogradContext* ctx, const Tensor& sigma, int64_t n_iter) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto h = typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, int64_t)>(
        "invariance::inv_sqrt_spectral_forward");
    auto [D, Q, lam] = h.call(sigma, n_iter);
    ctx->save_for_backward({sigma, Q, lam});
    ctx->saved_data["n"] = n_iter;
    return D;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto h =
        typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t)>(
            "invariance::inv_sqrt_spectral_backward");
    auto saved = ctx->get_saved_variables();
    return {h.call(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["n"].toInt()), Tensor()};
  }
};

Tensor newton_autograd(const Tensor& sigma, int64_t n) { return NewtonInvSqrt::apply(sigma, n); }
Tensor spectral_autograd(const Tensor& sigma, int64_t n) {
  return SpectralInvSqrt::apply(sigma, n);
}
Tensor newton_plain(const Tensor& sigma, int64_t n) {
  static auto h = typed<std::tuple<Tensor, Tensor>(const Tensor&, int64_t)>(
      "invariance::inv_sqrt_newton_forward");
  return std::get<0>(h.call(sigma, n));
}
Tensor spectral_plain(const Tensor& sigma, int64_t n) {
  static auto h = typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, int64_t)>(
      "invariance::inv_sqrt_spectral_forward");
  return std::get<0>(h.call(sigma, n));
}

// ---- fold_weights --------------------------------------------------------------------------

struct Fold : public torch::autograd::Function<Fold> {
  static variable_list forward(AutogradContext* ctx, const Tensor& weight, const Tensor& D,
                               const Tensor& mu, const Tensor& bias, int64_t groups,
                               bool interleaved) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto h = typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                     const Tensor&, int64_t, bool)>(
        "invariance::fold_weights");
    auto [w, b] = h.call(weight, D, mu, bias, groups, interleaved);
    ctx->save_for_backward({weight, D, mu, w});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["interleaved"] = interleaved;
    return {w, b};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto h =
        typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                         const Tensor&, const Tensor&,
                                                         const Tensor&, const Tensor&, int64_t,
                                                         bool, std::array<bool, 3>)>(
            "invariance::fold_weights_backward");
    auto saved = ctx->get_saved_variables();
    // Folding the running buffers (eval, stale steps) needs no gradient for D and mu: the
    // d x (C_out G) product of gD is skipped then.
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->needs_input_grad(2)};
    auto [gW, gD, gmu, gb] = h.call(grads[0], grads[1], saved[0], saved[1], saved[2], saved[3],
                                    ctx->saved_data["groups"].toInt(),
                                    ctx->saved_data["interleaved"].toBool(), mask);
    return {gW, gD, gmu, gb, Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> fold_autograd(const Tensor& weight, const Tensor& D, const Tensor& mu,
                                         const Tensor& bias, int64_t groups, bool interleaved) {
  auto out = Fold::apply(weight, D, mu, bias, groups, interleaved);
  return {out[0], out[1]};
}

// ---- local_stats ---------------------------------------------------------------------------

using LocalFwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, int64_t, double);

struct LocalStats : public torch::autograd::Function<LocalStats> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, int64_t window,
                               double rf_eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto h = typed<LocalFwdSig>("invariance::local_stats_forward");
    auto [mean, std_, var] = h.call(x, window, rf_eps);
    ctx->save_for_backward({x, mean, var});
    ctx->saved_data["window"] = window;
    return {mean, std_};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto h = typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, int64_t)>("invariance::local_stats_backward");
    auto saved = ctx->get_saved_variables();
    auto gx = h.call(grads[0], grads[1], saved[0], saved[1], saved[2], ctx->saved_data["window"].toInt());
    return {gx, Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> local_autograd(const Tensor& x, int64_t window, double rf_eps) {
  auto out = LocalStats::apply(x, window, rf_eps);
  return {out[0], out[1]};
}
std::tuple<Tensor, Tensor> local_plain(const Tensor& x, int64_t window, double rf_eps) {
  static auto h = typed<LocalFwdSig>("invariance::local_stats_forward");
  auto [mean, std_, var] = h.call(x, window, rf_eps);
  return {mean, std_};
}

}  // namespace
}  // namespace invariance

TORCH_LIBRARY_IMPL(invariance, Autograd, m) {
  m.impl("sample_norm", &invariance::sample_norm_autograd);
  m.impl("im2col_moments", &invariance::moments_autograd);
  m.impl("inv_sqrt_newton", &invariance::newton_autograd);
  m.impl("inv_sqrt_spectral", &invariance::spectral_autograd);
  m.impl("fold_weights", &invariance::fold_autograd);
  m.impl("local_stats", &invariance::local_autograd);
}

TORCH_LIBRARY_IMPL(invariance, CompositeExplicitAutograd, m) {
  m.impl("sample_norm", &invariance::sample_norm_plain);
  m.impl("inv_sqrt_newton", &invariance::newton_plain);
  m.impl("inv_sqrt_spectral", &invariance::spectral_plain);
  m.impl("local_stats", &invariance::local_plain);
}
