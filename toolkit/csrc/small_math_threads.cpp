// See small_math_threads.h for why the layer's d x d math has its own thread policy.
#include "small_math_threads.h"

#include <ATen/Parallel.h>
#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace invariance {
namespace {

int64_t initial_setting() {
  const char* raw = std::getenv("TOOLKIT_SMALL_MATH_THREADS");
  if (raw == nullptr || *raw == '\0' || std::string(raw) == "auto") return 0;
  const long value = std::strtol(raw, nullptr, 10);
  return value > 0 ? value : 0;
}

std::atomic<int64_t>& setting() {
  static std::atomic<int64_t> value{initial_setting()};
  return value;
}

// Ranks the launcher put on this node (1 without a launcher or when it does not say).
int ranks_on_node() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "HOROVOD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                          "SLURM_NTASKS_PER_NODE"}) {
    const char* raw = std::getenv(var);
    if (raw != nullptr) {
      const long value = std::strtol(raw, nullptr, 10);  // SLURM may append "(x3)"
      if (value > 0) return static_cast<int>(value);
    }
  }
  return 1;
}

// Cores this process may run on (affinity / cgroup cpuset, not the whole machine).
int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return 1;
}

}  // namespace

void set_small_math_threads(int64_t n) { setting().store(n > 0 ? n : 0); }

int64_t small_math_threads_setting() { return setting().load(); }

int small_math_threads() {
  const int threads = at::get_num_threads();
  const int64_t limit = setting().load();
  if (limit > 0) return static_cast<int>(std::min<int64_t>(limit, threads));
  return threads * ranks_on_node() > usable_cores() ? 1 : threads;
}

SmallMathThreads::SmallMathThreads(bool active) {
  if (!active) return;
  const int current = at::get_num_threads();
  const int wanted = small_math_threads();
  if (wanted < current) {
    previous_ = current;
    at::set_num_threads(wanted);
  }
}

SmallMathThreads::~SmallMathThreads() {
  if (previous_ > 0) at::set_num_threads(previous_);
}

}  // namespace invariance
