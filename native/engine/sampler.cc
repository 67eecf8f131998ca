#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
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

int32_t argmax(const std::vector<float>& x) {
  int32_t best = 0;
  for (size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[best] || (std::isnan(x[best]) && !std::isnan(x[i]))) best = static_cast<int32_t>(i);
  return best;
}

}  // namespace

int32_t sample_token(std::vector<float>& logits, const SamplingParams& p, const std::vector<int32_t>& history,
                     uint64_t* rng_state) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  if (p.repetition_penalty != 1.0f && p.penalty_window > 0) {
    std::unordered_set<int32_t> seen;
    const size_t from = history.size() > static_cast<size_t>(p.penalty_window) ? history.size() - p.penalty_window : 0;
    for (size_t i = from; i < history.size(); ++i) {
      const int32_t t = history[i];
      if (t < 0 || t >= vocab || !seen.insert(t).second) continue;
      float& l = logits[t];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (p.temperature <= 0.0f) return argmax(logits);

  // Candidates sorted by logit (descending, ties by id), cut by top-k.
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  size_t keep = static_cast<size_t>(vocab);
  if (p.top_k > 0 && p.top_k < vocab) {
    keep = static_cast<size_t>(p.top_k);
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), better);
    idx.resize(keep);
  } else {
    std::sort(idx.begin(), idx.end(), better);
  }
  // Softmax at the temperature, in double.
  std::vector<double> prob(keep);
  const double top = logits[idx[0]];
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += prob[i] = std::exp((logits[idx[i]] - top) / p.temperature);
  for (double& x : prob) x /= sum;
  // min-p: drop tokens below min_p times the most likely one's probability.
  if (p.min_p > 0.0f) {
    size_t n = 1;
    while (n < keep && prob[n] >= p.min_p * prob[0]) ++n;
    keep = n;
  }
  // top-p: the smallest prefix whose mass reaches top_p.
  if (p.top_p < 1.0f) {
    double mass = 0;
    size_t n = 0;
    while (n < keep) {
      mass += prob[n++];
      if (mass >= p.top_p) break;
    }
    keep = n;
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  double r = next_unit(rng_state) * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace kvf
