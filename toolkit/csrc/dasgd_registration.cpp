// Schemas of the `dasgd` op library (torch.ops.dasgd.*) and their CPU kernels.  The ops
// mutate their arguments in place and return nothing; they run under no_grad on the
// optimizer's tensors, so they have no autograd.  Other devices use the equivalent torch
// ops (toolkit/strategies/flat.py): a GPU streams these buffers in well under a millisecond.
#include <torch/library.h>

#include "dasgd_ops.h"

TORCH_LIBRARY(dasgd, m) {
  m.def("merge_(Tensor(a!)[] model, Tensor(b!) send, Tensor(c!) snapshot, int ranks, "
        "bool relaunch) -> ()");
  m.def("snapshot_(Tensor[] model, Tensor(a!) send, Tensor(b!) snapshot) -> ()");
}

TORCH_LIBRARY_IMPL(dasgd, CPU, m) {
  m.impl("merge_", &dasgd::cpu::merge_);
  m.impl("snapshot_", &dasgd::cpu::snapshot_);
}
