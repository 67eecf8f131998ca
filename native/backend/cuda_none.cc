// Stand-ins for a build without CUDA (binding.gyp, or KVFOCUS_CUDA=off): no devices, and a
// reason that says how to get them.
#include "backend.h"

namespace kvf {

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_unavailable_reason() { return "this kvfocus binary was built without CUDA"; }
std::vector<DeviceInfo> cuda_devices() { return {}; }
Backend* cuda_backend(int index, Status* why) {
  *why = device_error("cuda:" + std::to_string(index) + " is not available: " + cuda_unavailable_reason());
  return nullptr;
}

}  // namespace kvf
