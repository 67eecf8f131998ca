// embedding: out[t, :] = table[ids[t], :]
//   table: (vocab, dim) any float dtype; ids: (tokens) i32; out: (tokens, dim) any float dtype
//   (a conversion on the way when they differ).
// An id outside [0, vocab) is an invalid_argument status naming the token index; the CUDA
// kernel writes zeros for it and reports it through a device flag the launcher checks.
#pragma once
#include "common.h"

namespace kvf {

struct EmbeddingArgs {
  const void* table = nullptr;
  DType table_dtype = DType::f32;
  const int32_t* ids = nullptr;
  void* out = nullptr;
  DType out_dtype = DType::f32;
  int64_t tokens = 0, vocab = 0, dim = 0;
};

Status embedding_cpu(const EmbeddingArgs& args);
Status embedding_cuda(const EmbeddingArgs& args, void* stream);

}  // namespace kvf
