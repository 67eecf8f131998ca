// CPU twins split their work with parallel_for; the CPU backend's thread pool implements it.
#pragma once

#include <cstdint>
#include <functional>

namespace kvf::cpu {

// Runs fn(begin, end) over [0, n) in chunks of at least `grain` items on the pool's threads
// (the caller's thread takes part). Returns when every chunk is done.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

// Threads parallel_for uses (KVFOCUS_THREADS, else the hardware concurrency).
int num_threads();

}  // namespace kvf::cpu

// Hot CPU loops are compiled for baseline x86-64 and for AVX2+FMA and AVX-512 hosts; the loader
// picks the best clone at run time, so one prebuilt binary is fast everywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define KVF_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define KVF_CPU_CLONES
#endif
