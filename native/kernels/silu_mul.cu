// TEMPORARY stub until the kernel lands.
#include "silu_mul.h"
namespace kvf {
Status silu_mul_cuda(const SiluMulArgs&, void*) { return unsupported("silu_mul: not implemented yet"); }
}  // namespace kvf
