#pragma once
#include <napi.h>

namespace kvf::napi {
// Adds `ops`: matmul, rmsnorm, rope, rerotate, rerotatePages, softmax, siluMul, embedding, topk, cast, add,
// kvWrite, pagedAttention.
void register_ops(Napi::Env env, Napi::Object exports);
}  // namespace kvf::napi
