// CPU kernels of DaSGD's merge and snapshot: per model tensor, a parallel loop over its slice
// of the flat buffers (the tensors are laid out back to back in model order, one dtype).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "dasgd_merge_math.h"
#include "dasgd_ops.h"

namespace dasgd {
namespace cpu {
namespace {

constexpr int64_t kGrain = 1 << 16;  // elements per task: the loops are memory-bound

void check_layout(at::TensorList model, const at::Tensor& send, const at::Tensor& snapshot,
                  const char* op) {
  int64_t total = 0;
  for (const auto& t : model) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), op,
                ": model tensors must be contiguous CPU tensors");
    TORCH_CHECK(t.scalar_type() == send.scalar_type(), op, ": model tensor dtype ",
                t.scalar_type(), " differs from the buffer's ", send.scalar_type());
    total += t.numel();
  }
  for (const auto* buf : {&send, &snapshot}) {
    TORCH_CHECK(buf->device().is_cpu() && buf->is_contiguous() && buf->dim() == 1, op,
                ": send and snapshot must be flat contiguous CPU tensors");
    TORCH_CHECK(buf->scalar_type() == send.scalar_type(), op, ": send and snapshot dtypes differ");
    TORCH_CHECK(buf->numel() == total, op, ": buffers hold ", buf->numel(),
                " elements, the model tensors ", total);
  }
}

}  // namespace

void merge_(at::TensorList model, const at::Tensor& send, const at::Tensor& snapshot,
            int64_t ranks, bool relaunch) {
  check_layout(model, send, snapshot, "dasgd::merge_");
  TORCH_CHECK(ranks >= 1, "dasgd::merge_: ranks must be >= 1, got ", ranks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, send.scalar_type(), "dasgd_merge", [&] {
    // Half types compute in float (opmath), like ATen's own elementwise kernels.
    using math_t = at::opmath_type<scalar_t>;
    const math_t n = static_cast<math_t>(ranks), inv_n = math_t(1) / n;
    scalar_t* sum = send.data_ptr<scalar_t>();
    scalar_t* snap = snapshot.data_ptr<scalar_t>();
    int64_t offset = 0;
    for (const auto& t : model) {
      scalar_t* w = t.data_ptr<scalar_t>();
      scalar_t* s_sum = sum + offset;
      scalar_t* s_snap = snap + offset;
      at::parallel_for(0, t.numel(), kGrain, [&](int64_t begin, int64_t end) {
        if (relaunch) {
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t v = static_cast<scalar_t>(merged_weight<math_t>(
                w[i], s_sum[i], s_snap[i], n, inv_n));
            w[i] = v;
            s_sum[i] = v;
            s_snap[i] = v;
          }
        } else {
          for (int64_t i = begin; i < end; ++i)
            w[i] = static_cast<scalar_t>(merged_weight<math_t>(w[i], s_sum[i], s_snap[i], n,
                                                               inv_n));
        }
      });
      offset += t.numel();
    }
  });
}

void snapshot_(at::TensorList model, const at::Tensor& send, const at::Tensor& snapshot) {
  check_layout(model, send, snapshot, "dasgd::snapshot_");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, send.scalar_type(), "dasgd_snapshot", [&] {
    scalar_t* out_a = send.data_ptr<scalar_t>();
    scalar_t* out_b = snapshot.data_ptr<scalar_t>();
    int64_t offset = 0;
    for (const auto& t : model) {
      const scalar_t* w = t.data_ptr<scalar_t>();
      scalar_t* a = out_a + offset;
      scalar_t* b = out_b + offset;
      at::parallel_for(0, t.numel(), kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t v = w[i];
          a[i] = v;
          b[i] = v;
        }
      });
      offset += t.numel();
    }
  });
}

}  // namespace cpu
}  // namespace dasgd
