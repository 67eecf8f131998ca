#include "sampler.h"

#include <unordered_set>

namespace kvf {
namespace {

// splitmix64: tiny, statistically sound, and identical on every platform.
uint64_t next_u64(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double next_unit(uint64_t* s) { return static_cast<double>(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

}  // namespace

SampleParams sample_params(const SamplingParams& p, uint64_t* rng_state) {
  SampleParams out;
  out.temperature = p.temperature;
  out.top_k = p.top_k;
  out.top_p = p.top_p;
  out.min_p = p.min_p;
  out.penalty = p.penalty_window > 0 ? p.repetition_penalty : 1.0f;
  out.uniform = p.temperature > 0.0f ? next_unit(rng_state) : 0.0;
  return out;
}

std::vector<int32_t> penalized_tokens(const SamplingParams& p, const std::vector<int32_t>& history, int32_t vocab) {
  std::vector<int32_t> ids;
  if (p.repetition_penalty == 1.0f || p.penalty_window <= 0) return ids;
  std::unordered_set<int32_t> seen;
  const size_t from = history.size() > static_cast<size_t>(p.penalty_window) ? history.size() - p.penalty_window : 0;
  for (size_t i = from; i < history.size(); ++i) {
    const int32_t t = history[i];
    if (t >= 0 && t < vocab && seen.insert(t).second) ids.push_back(t);
  }
  return ids;
}

}  // namespace kvf
