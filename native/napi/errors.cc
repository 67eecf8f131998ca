#include "errors.h"

#include "instance.h"

namespace kvf::napi {

Napi::Error make_error(Napi::Env env, const Status& st) {
  Instance* inst = Instance::get(env);
  if (inst != nullptr && !inst->error_factory.IsEmpty()) {
    Napi::Value err = inst->error_factory.Call({Napi::Number::New(env, static_cast<int>(st.code)),
                                                Napi::String::New(env, st.message)});
    if (err.IsObject()) return Napi::Error(env, err);
  }
  return Napi::Error::New(env, st.message);
}

void throw_status(Napi::Env env, const Status& st) { throw make_error(env, st); }

void throw_invalid(Napi::Env env, const std::string& message) { throw_status(env, invalid_argument(message)); }

}  // namespace kvf::napi
