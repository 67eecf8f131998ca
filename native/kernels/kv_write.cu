// TEMPORARY stub until the kernel lands.
#include "kv_write.h"
namespace kvf {
Status kv_write_cuda(const KvWriteArgs&, void*) { return unsupported("kv_write: not implemented yet"); }
}  // namespace kvf
