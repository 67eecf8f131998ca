// Token sampling from one row of logits, on the host: repetition penalty, temperature, top-k,
// top-p (nucleus), min-p, then a draw from a seeded generator kept per sequence, so a seed
// reproduces a generation exactly. temperature 0 is greedy (ties: lowest id).
#pragma once

#include <cstdint>
#include <vector>

namespace kvf {

struct SamplingParams {
  float temperature = 0.0f;
  int32_t top_k = 0;        // 0: off
  float top_p = 1.0f;       // 1: off
  float min_p = 0.0f;       // 0: off
  float repetition_penalty = 1.0f;  // 1: off (CTRL-style: logit / p if > 0 else logit * p)
  int32_t penalty_window = 64;      // how many recent tokens the penalty sees
};

// Picks a token from logits (vocab entries; modified in place by the penalty).
int32_t sample_token(std::vector<float>& logits, const SamplingParams& p, const std::vector<int32_t>& history,
                     uint64_t* rng_state);

}  // namespace kvf
