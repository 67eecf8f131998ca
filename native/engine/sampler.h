// Sampling settings of a request, and what the sample op (kernels/sample.h) needs from the
// host per step: the parameters with this step's draw from the sequence's seeded generator, and
// the distinct recent tokens the repetition penalty applies to. temperature 0 is greedy.
#pragma once

#include <cstdint>
#include <vector>

#include "../kernels/sample.h"

namespace kvf {

struct SamplingParams {
  float temperature = 0.0f;
  int32_t top_k = 0;        // 0: off
  float top_p = 1.0f;       // 1: off
  float min_p = 0.0f;       // 0: off
  float repetition_penalty = 1.0f;  // 1: off (CTRL-style: logit / p if > 0 else logit * p)
  int32_t penalty_window = 64;      // how many recent tokens the penalty sees
};

// The sample op's parameters for one row. Takes one draw from *rng_state when the row samples
// (temperature > 0), none when it is greedy, so a seed reproduces a generation.
SampleParams sample_params(const SamplingParams& p, uint64_t* rng_state);

// The distinct ids in [0, vocab) among the last penalty_window tokens of `history` (empty
// when the penalty is off), in order of first appearance in the window.
std::vector<int32_t> penalized_tokens(const SamplingParams& p, const std::vector<int32_t>& history, int32_t vocab);

}  // namespace kvf
