// rerotate_pages: the fused re-rotation of CacheFocus. Moves the keys of chosen tokens, of every
// layer at once, from the positions they were rotated at to new ones: reads stored key pages,
// writes (request-owned) key pages, and touches only the rows it is given.
//   src_pool, dst_pool: (num_pages, page_size, kv_heads, head_dim) keys in one float dtype; the
//     pages of every layer live in one pool, so a page id names a layer's page by itself.
//     dst_pool may be src_pool (the engine's single key pool).
//   runs: (num_runs) RerotateRun. Run r moves rows [src_row, src_row + rows) of page src_page
//     to rows [dst_row, dst_row + rows) of page dst_page; row k goes from position
//     positions[from + k] to positions[to + k].
//   positions: i32, the packed position lists the runs point into.
//   inv_freq: (rotary_dim / 2) f32, rope scaling folded in (lib/model/rope.ts).
//   rotary_dim: leading dimensions of each head that carry RoPE (even, <= head_dim; 0 means
//     head_dim): the rest are copied unchanged. layout: pairs as in rope.h, within them.
// Math as rerotate (rerotate_math.h, shared): the shift q - p in integers, the angle in f32,
// accurate sin/cos, rotation in f32, ONE rounding to the storage dtype; a move by 0 copies the
// key bit for bit. The same move gives the same bits as rerotate over the same rows.
// A run with head = h + 1 touches KV head h of its rows only; the other heads are neither read
// nor written, so two runs on the same rows but different heads do not overlap.
// Runs must not write rows that another run reads or writes (a run may rewrite its own rows in
// place: src == dst page and row). The caller owns the tables and checks the runs against the
// pool: lib/ops.ts does for the op (ops.keyMoves, before the runs go to the device), the engine
// builds them itself (Sequence::attach), and check_rerotate_runs checks a host copy.
#pragma once
#include "common.h"

namespace kvf {

struct RerotateRun {
  int32_t src_page = 0, src_row = 0;
  int32_t dst_page = 0, dst_row = 0;
  int32_t rows = 0;
  int32_t from = 0, to = 0;  // offsets into positions
  // 0: the run moves every KV head of its rows; h + 1: only KV head h (per-head cache policies,
  // whose heads keep different tokens). Also keeps the struct 32 bytes (8-byte aligned uploads).
  int32_t head = 0;
};
static_assert(sizeof(RerotateRun) == 32, "RerotateRun is uploaded as 8 i32");

struct RerotatePagesArgs {
  const void* src_pool = nullptr;
  void* dst_pool = nullptr;
  DType dtype = DType::f32;
  int64_t num_pages = 0, page_size = 16, kv_heads = 0, head_dim = 0;
  int64_t rotary_dim = 0;  // 0: head_dim
  const RerotateRun* runs = nullptr;
  int64_t num_runs = 0;
  const int32_t* positions = nullptr;
  const float* inv_freq = nullptr;
  RopeLayout layout = RopeLayout::half;
};

Status rerotate_pages_cpu(const RerotatePagesArgs& args);
Status rerotate_pages_cuda(const RerotatePagesArgs& args, void* stream);

// Checks a host copy of the runs against the pool and the position list (positions entries);
// the engine's runs are right by construction, the op's come from JavaScript.
Status check_rerotate_runs(const RerotateRun* runs, int64_t num_runs, int64_t num_pages, int64_t page_size, int64_t positions,
                           int64_t kv_heads);

}  // namespace kvf
