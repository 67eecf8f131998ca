// sample: one token id per row of logits, on the device that holds them, so that a decode step
// copies only the sampled ids to the host.
//   logits: (rows, vocab) f32, modified in place by the repetition penalty
//   out:    (rows) i32
// Per row r: the tokens penalty_ids[penalty_start[r] .. penalty_start[r+1]) (distinct) get the
// CTRL penalty (l / p if l > 0 else l * p, p = params[r].penalty). Then temperature <= 0 is
// greedy (the first maximum; NaN never wins). Otherwise, over the tokens ranked by logit
// (descending, lower id first on ties): cut to top_k (0: off), probabilities
// exp((l - max) / temperature) in double normalised over that cut, min-p cut (prob >= min_p x the
// top one's), top-p cut (the shortest prefix whose mass reaches top_p), and the token where the
// running mass of the kept prefix first exceeds uniform x its total. `uniform` in [0, 1) is drawn
// on the host from the sequence's generator, so a seed reproduces a generation on any device.
// The CPU twin sorts; the CUDA kernel finds each cut with a radix search over the rank keys of
// topk (no sort), so the two sum the same terms in different orders: they agree except where a
// cut falls within rounding (~1e-16 relative) of a boundary.
#pragma once
#include "common.h"

namespace kvf {

struct SampleParams {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float penalty = 1.0f;
  int32_t pad = 0;     // keeps `uniform` 8-byte aligned in packed arrays of these
  double uniform = 0;  // the draw, in [0, 1)
};

struct SampleArgs {
  float* logits = nullptr;
  int64_t rows = 0, vocab = 0;
  const SampleParams* params = nullptr;      // (rows)
  const int32_t* penalty_start = nullptr;    // (rows + 1)
  const int32_t* penalty_ids = nullptr;      // (penalty_start[rows])
  int32_t* out = nullptr;                    // (rows)
  // CUDA only: (rows, vocab) doubles of scratch for the probabilities (null on the CPU).
  double* workspace = nullptr;
};

Status sample_cpu(const SampleArgs& args);
Status sample_cuda(const SampleArgs& args, void* stream);

}  // namespace kvf
