// TEMPORARY stub until the kernel lands.
#include "softmax.h"
namespace kvf {
Status softmax_cuda(const SoftmaxArgs&, void*) { return unsupported("softmax: not implemented yet"); }
}  // namespace kvf
