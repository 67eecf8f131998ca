// TEMPORARY stub until the kernel lands.
#include "paged_attention.h"
namespace kvf {
Status paged_attention_cuda(const PagedAttentionArgs&, void*) { return unsupported("paged_attention: not implemented yet"); }
}  // namespace kvf
