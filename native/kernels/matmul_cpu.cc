// TEMPORARY stub until the kernel lands.
#include "matmul.h"
namespace kvf {
Status matmul_cpu(const MatmulArgs&) { return unsupported("matmul: not implemented yet"); }
}  // namespace kvf
