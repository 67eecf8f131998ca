// Paged KV storage. A KvPool is one device allocation of fixed-size pages, each holding the
// keys and values of `page_size` tokens of ONE layer:
//   k_pool, v_pool: (num_pages, page_size, kv_heads, head_dim)
// Pages are reference counted so sequences can share a document's pages. A Sequence owns, per
// layer, a page table, a length and the position of every cached slot ("positions are data,
// per layer"): layers may hold different token sets (pruning, ladders) at different positions.
//
// Stored documents (KvBlock) are shared page by page. A block starts at a page boundary, so a
// sequence that attaches blocks pads each one's last page with holes (slots holding no token,
// masked in attention) and starts the next block, or its own tokens, on a fresh page; a
// stored page is never written. K and V live in separate pools indexed by the same page id,
// so a sequence keeps two page tables: a block attached at its stored positions puts the same
// page in both; a block moved to other positions gets request-owned key pages (re-rotated
// copies) while its value table still points at the stored pages, whose V half is then the
// only half read. (The K half of a stored page under a moved block, and the V half of the
// request-owned key page, go unused: the price of one refcount per page id.)
//
// Threading: page tables are edited on the JavaScript thread only; queued jobs capture copies
// of the tables they read. A page freed here may be handed out again at once: every job that
// read it was queued earlier on the same device queue and so runs before any job of its new
// owner.
#pragma once

#include <mutex>
#include <vector>

#include "device.h"

namespace kvf {

struct KvPoolSpec {
  int64_t num_pages = 0, page_size = 16, layers = 0, kv_heads = 0, head_dim = 0;
  DType dtype = DType::f32;
};

class KvPool {
 public:
  static std::shared_ptr<KvPool> create(Device* device, const KvPoolSpec& spec, Status* st);

  const KvPoolSpec& spec() const { return spec_; }
  Device* device() const { return device_; }
  const BufferRef& k() const { return k_; }
  const BufferRef& v() const { return v_; }

  // Takes n free pages (refcount 1). out_of_memory, with the pool's numbers, when too few.
  Status acquire(int64_t n, std::vector<int32_t>* pages);
  void retain(int32_t page);
  void release(int32_t page);
  int64_t free_pages() const;

 private:
  KvPool(Device* d, const KvPoolSpec& s) : device_(d), spec_(s) {}
  Device* device_;
  KvPoolSpec spec_;
  BufferRef k_, v_;
  mutable std::mutex mu_;
  std::vector<int32_t> free_;  // a stack: recently freed pages are reused first (warm caches)
  std::vector<int32_t> refs_;
};

// Position of a slot that holds no token (the padded tail of an attached block's last page).
constexpr int32_t kHole = -1;

// A block attached to a sequence, as one layer holds it: whole pages from first_page. Blocks
// are numbered in attach order (0: the first attached, a store's prefix).
struct Span {
  int32_t block = 0;
  int64_t first_page = 0, pages = 0, tokens = 0;
  bool own_keys = false;  // the layer reads its keys from pages of its own (moved): rotated in place
};

struct LayerKv {
  std::vector<int32_t> pages;      // key page table
  std::vector<int32_t> v_pages;    // value page table: pages[i] except under a moved block
  std::vector<int32_t> positions;  // RoPE position of every slot, kHole for a hole
  int64_t holes = 0;               // slots that are holes
  std::vector<Span> spans;         // attached blocks this layer still holds, in slot order
  int64_t attached = 0;            // slots of attached blocks (with their holes): never truncated
  int32_t shift = 0;               // added to the position of every token appended to this layer
  int64_t slots() const { return static_cast<int64_t>(positions.size()); }
  int64_t length() const { return slots() - holes; }  // tokens
  // Rows of page i that hold tokens before its first hole (holes only end a page).
  int32_t page_rows(size_t i, int64_t page_size) const;
};

// KV of a run of tokens kept apart from any sequence (a stored document, or the store's
// prefix): per layer, whole pages starting at a page boundary and the position of each token.
// It holds one reference on each page; sequences that attach it take their own.
struct KvBlock {
  std::shared_ptr<KvPool> pool;
  std::vector<std::vector<int32_t>> pages;      // (layers) page ids
  std::vector<std::vector<int32_t>> positions;  // (layers) one per token
  int64_t tokens() const { return positions.empty() ? 0 : static_cast<int64_t>(positions[0].size()); }
  ~KvBlock();
};

// A block attached to a sequence with its first token at `start`: every token moves by
// start - (its stored position of the first token).
struct BlockPlacement {
  std::shared_ptr<KvBlock> block;
  int32_t start = 0;
};

class Sequence {
 public:
  explicit Sequence(std::shared_ptr<KvPool> pool);
  ~Sequence();  // releases every page it holds
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  const std::shared_ptr<KvPool>& pool() const { return pool_; }
  std::vector<LayerKv>& layers() { return layers_; }
  const std::vector<LayerKv>& layers() const { return layers_; }

  // Reserves `positions.size()` new slots at the end of layers [layer_begin, layer_end) (all by
  // default), acquiring pages as needed, and records their positions (each layer adds its
  // shift). On failure nothing changes. Returns, per layer, the flat pool slot (page *
  // page_size + row) of each new token through *slots (may be null; empty for other layers).
  Status append(const std::vector<int32_t>& positions, std::vector<std::vector<int32_t>>* slots, int64_t layer_begin = 0,
                int64_t layer_end = -1);

  // Drops the newest n tokens of every layer (of layers [layer_begin, layer_end) when given),
  // releasing pages that become empty; never reaches into attached blocks.
  void truncate(int64_t n, int64_t layer_begin = 0, int64_t layer_end = -1);

  // Layers from `from_layer` on stop holding the attached blocks listed (their pages are
  // released once nothing else holds them). Only blocks: no token appended after them moves
  // within its page. Unknown block numbers are ignored.
  Status drop_blocks(int64_t from_layer, const std::vector<int32_t>& blocks);

  // Layers from `from_layer` on hold block b's first token at new_start[b] (-1: unchanged): keys
  // of blocks still on stored pages move to pages of their own (acquired here, all or nothing),
  // keys already on pages of their own are rotated in place. The re-rotations are returned.
  Status move_blocks(int64_t from_layer, const std::vector<std::pair<int32_t, int32_t>>& new_starts, std::vector<RerotateRun>* moves,
                     std::vector<int32_t>* move_positions);

  // Keeps only the slots `keep` of `layer` (a policy's eviction), at positions new_positions
  // (one per kept slot): the layer then holds keep.size() slots. Kept slots past the new length
  // move into the freed slots below it (the tail is released), so pages stay dense; *new_slots
  // gets each kept slot's slot afterwards. The keys to move or re-rotate are appended to
  // *key_moves (into *positions), the values to move to *value_moves (same positions: a copy).
  // The layer must hold no attached block.
  Status compact(int64_t layer, const std::vector<int32_t>& keep, const std::vector<int32_t>& new_positions, std::vector<int32_t>* new_slots,
                 std::vector<RerotateRun>* key_moves, std::vector<RerotateRun>* value_moves, std::vector<int32_t>* positions);

  // Per-head eviction (policies whose KV heads keep different tokens: Cascading, SnapKV): the
  // layer then holds n = new_positions.size() slots, and slot s of KV head h takes what slot
  // sources[h * n + s] of head h holds now (any slot of the layer; a slot is a source at most
  // once per head), its key re-rotated from that slot's position to new_positions[s]. The moves
  // are staged: *stage (keys and values, to `scratch` pages acquired here, all or nothing) and
  // then *place (from them to the slots), two launches in that order; slots whose content stays
  // are re-rotated in place in the first. Pages past n are released. Runs' positions go to
  // *positions. The layer must hold no attached block. Pages past n leave the layer's tables
  // but are not released: they go to `released` with the scratch pages, for the caller to
  // release once every layer's moves are queued (moves of several layers share one launch, and
  // a page released early could come back as another layer's scratch while this layer's moves
  // still read it).
  struct HeadGather {
    std::vector<RerotateRun> stage_k, stage_v, place;  // place: keys and values alike (copies)
    std::vector<int32_t> positions;
    std::vector<int32_t> released;  // pages (scratch, the layer's old tail) to release after queuing
  };
  Status gather_heads(int64_t layer, const std::vector<int32_t>& sources, const std::vector<int32_t>& new_positions, HeadGather* out);

  // Tokens appended from now on to layers from `from_layer` are placed `shift` further than the
  // position a step gives them (per-layer coordinate frames after pruning).
  void set_shift(int64_t from_layer, int32_t shift);

  // The hidden state a step that stopped before the last layer left for the next one (rows x
  // hidden, activation dtype), and its rows. Set on the JS thread when the step is queued.
  BufferRef carry;
  int64_t carry_rows = 0;

  // Drops everything.
  void clear();

  // Attaches blocks in order to an empty sequence, each from a fresh page; pages of moved
  // blocks' keys are acquired here (all or nothing: on failure the sequence stays empty), and
  // the re-rotations they need are returned, every layer's together: one run per moved page,
  // rows [0, rows) of the stored key page into the sequence's own, from the stored positions
  // to the new ones (offsets into *move_positions). One rerotate_pages launch does them all.
  Status attach(const std::vector<BlockPlacement>& blocks, std::vector<RerotateRun>* moves,
                std::vector<int32_t>* move_positions);

  // The pages holding tokens [from_token, length) of every layer, as a block. from_token must
  // start a page and nothing after it may be a hole.
  Status export_block(int64_t from_token, std::shared_ptr<KvBlock>* out) const;

  // Whether any layer reads values through pages other than its keys' (a moved block).
  bool split_kv() const { return split_kv_; }

  // Token ids fed so far (for repetition penalties) and the sampler's random state.
  std::vector<int32_t> history;
  uint64_t rng_state = 0x853c49e6748fea9bULL;

 private:
  void release_pages(LayerKv& l);
  void release_tail(LayerKv& l, size_t keep);
  std::shared_ptr<KvPool> pool_;
  std::vector<LayerKv> layers_;
  bool split_kv_ = false;
};

}  // namespace kvf
