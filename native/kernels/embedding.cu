// TEMPORARY stub until the kernel lands.
#include "embedding.h"
namespace kvf {
Status embedding_cuda(const EmbeddingArgs&, void*) { return unsupported("embedding: not implemented yet"); }
}  // namespace kvf
