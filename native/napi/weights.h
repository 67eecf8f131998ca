#pragma once
#include <napi.h>

namespace kvf::napi {
// mapTensors(path, [{ offset, bytes, dtype, shape }], device) -> NativeTensor[]
Napi::Value map_tensors(const Napi::CallbackInfo& info);
}  // namespace kvf::napi
