// TEMPORARY stub until the kernel lands.
#include "softmax.h"
namespace kvf {
Status softmax_cpu(const SoftmaxArgs&) { return unsupported("softmax: not implemented yet"); }
}  // namespace kvf
