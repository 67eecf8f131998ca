// TEMPORARY stub until the kernel lands.
#include "topk.h"
namespace kvf {
Status topk_cpu(const TopKArgs&) { return unsupported("topk: not implemented yet"); }
}  // namespace kvf
