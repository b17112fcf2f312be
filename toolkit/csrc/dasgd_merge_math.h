// Per-element math of DaSGD's delay-corrected merge.  The CPU kernel uses it; it is TK_HD
// and free of ATen/c10 includes so that a CUDA kernel could share it (today other devices
// run the same formula as torch ops, toolkit/strategies/flat.py).
#pragma once

#include "host_device.h"

namespace dasgd {

// w + (avg - s) with the average's 1/n folded in: the allreduce sent the SUM over n ranks of
// the snapshots, so avg - s = (sum - n s) / n.  For n a power of two this is bit for bit
// w + (sum / n - s): scaling by 2^k commutes with rounding.
template <typename T>
TK_HD inline T merged_weight(T w, T sum, T snapshot, T ranks, T inv_ranks) {
  return w + (sum - ranks * snapshot) * inv_ranks;
}

}  // namespace dasgd
