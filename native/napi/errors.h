// Native failures become the typed JavaScript errors of lib/errors.ts. The classes are handed
// to the addon once at load (setErrorFactory), so C++ throws the right subclass with a `code`.
#pragma once

#include <napi.h>

#include "../kernels/common.h"

namespace kvf::napi {

// Builds the JS error for a failed Status (through the registered factory when present).
Napi::Error make_error(Napi::Env env, const Status& st);
[[noreturn]] void throw_status(Napi::Env env, const Status& st);
[[noreturn]] void throw_invalid(Napi::Env env, const std::string& message);

// Runs a binding body, turning stray C++ exceptions (bad_alloc, ...) into JS errors so that
// nothing escapes into node-addon-api and terminates the process.
template <typename Fn>
Napi::Value guarded(const Napi::CallbackInfo& info, Fn&& fn) {
  try {
    return fn(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw make_error(info.Env(), out_of_memory("host memory exhausted"));
  } catch (const std::exception& e) {
    throw make_error(info.Env(), Status(StatusCode::internal, e.what()));
  }
}

}  // namespace kvf::napi
