// sample on the CPU: the reference algorithm, sorting the candidates (sample.h).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sample.h"

namespace kvf {
namespace {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best] || (std::isnan(x[best]) && !std::isnan(x[i]))) best = i;
  return static_cast<int32_t>(best);
}

int32_t sample_row(float* logits, int64_t vocab, const SampleParams& p, const int32_t* penalty, int64_t penalties) {
  if (p.penalty != 1.0f) {
    for (int64_t i = 0; i < penalties; ++i) {
      float& l = logits[penalty[i]];
      l = l > 0 ? l / p.penalty : l * p.penalty;
    }
  }
  if (p.temperature <= 0.0f) return argmax(logits, vocab);

  // Candidates sorted by logit (descending, ties by id), cut by top-k.
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  size_t keep = static_cast<size_t>(vocab);
  if (p.top_k > 0 && p.top_k < vocab) {
    keep = static_cast<size_t>(p.top_k);
    std::partial_sort(idx.begin(), idx.begin() + static_cast<ptrdiff_t>(keep), idx.end(), better);
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
  double r = p.uniform * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace

Status sample_cpu(const SampleArgs& a) {
  for (int64_t r = 0; r < a.rows; ++r) {
    const int32_t from = a.penalty_start[r];
    a.out[r] = sample_row(a.logits + r * a.vocab, a.vocab, a.params[r], a.penalty_ids + from, a.penalty_start[r + 1] - from);
  }
  return Status::Ok();
}

}  // namespace kvf
