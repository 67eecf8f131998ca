// TEMPORARY stub until the kernel lands.
#include "embedding.h"
namespace kvf {
Status embedding_cpu(const EmbeddingArgs&) { return unsupported("embedding: not implemented yet"); }
}  // namespace kvf
