// TEMPORARY stub until the kernel lands.
#include "rope.h"
namespace kvf {
Status rope_cpu(const RopeArgs&) { return unsupported("rope: not implemented yet"); }
}  // namespace kvf
