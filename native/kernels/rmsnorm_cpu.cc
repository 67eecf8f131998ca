// TEMPORARY stub until the kernel lands.
#include "rmsnorm.h"
namespace kvf {
Status rmsnorm_cpu(const RmsNormArgs&) { return unsupported("rmsnorm: not implemented yet"); }
}  // namespace kvf
