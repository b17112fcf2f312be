// DaSGD's buffer kernels (torch.ops.dasgd.*): one pass over the model instead of several
// elementwise torch ops, because on a CPU node the passes over a 45 MB model compete with
// the next step's compute for the same cores and memory bandwidth.
#pragma once

#include <ATen/ATen.h>

namespace dasgd {
namespace cpu {

// model[i] += (send[o_i..] - ranks * snapshot[o_i..]) / ranks for every model tensor i laid
// out back to back in the flat send/snapshot buffers; with relaunch, the merged values are
// also written to send and snapshot (the next round's buffers, same slot).
void merge_(at::TensorList model, const at::Tensor& send, const at::Tensor& snapshot,
            int64_t ranks, bool relaunch);

// send[o_i..] = snapshot[o_i..] = model[i]: one read of the model, two writes.
void snapshot_(at::TensorList model, const at::Tensor& send, const at::Tensor& snapshot);

}  // namespace cpu
}  // namespace dasgd
