// TEMPORARY stub until the kernel lands.
#include "matmul.h"
namespace kvf {
Status matmul_cuda(const MatmulArgs&, void*) { return unsupported("matmul: not implemented yet"); }
}  // namespace kvf
