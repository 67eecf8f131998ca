// TEMPORARY stub until the kernel lands.
#include "rope.h"
namespace kvf {
Status rope_cuda(const RopeArgs&, void*) { return unsupported("rope: not implemented yet"); }
}  // namespace kvf
