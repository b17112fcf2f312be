// How many intra-op threads the layer's small (d x d, d <= 576) math may use on the CPU.
//
// That math is dozens of ATen calls per layer, each a parallel region ending in a barrier.
// On a node with more busy threads than cores every barrier waits for a descheduled thread
// (measured here with 2 ranks x 2 threads on 2 cores: a 576^2 elementwise op 16 ms with 2
// threads vs 0.03 ms with one, a 576^3 bmm 32 ms vs 12 ms), so there it runs on one thread.
// On a node the job owns it is worth the threads (idle here: a 576^3 bmm 1.7 ms with 2
// threads vs 3.4 ms with one, eigh 13 ms vs 17 ms).
#pragma once

#include <cstdint>

namespace invariance {

// 0 = auto (the default; env TOOLKIT_SMALL_MATH_THREADS sets the initial value), n >= 1 =
// at most n threads.
void set_small_math_threads(int64_t n);
int64_t small_math_threads_setting();

// Threads to use now. auto: 1 when the node is oversubscribed (intra-op threads x ranks on
// this node > cores this process may run on), else the current intra-op thread count.
int small_math_threads();

// Limits the intra-op threads to small_math_threads() for the enclosing scope (restored on
// exit); inactive (e.g. for CUDA tensors) when `active` is false.
class SmallMathThreads {
 public:
  explicit SmallMathThreads(bool active);
  ~SmallMathThreads();
  SmallMathThreads(const SmallMathThreads&) = delete;
  SmallMathThreads& operator=(const SmallMathThreads&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace invariance
