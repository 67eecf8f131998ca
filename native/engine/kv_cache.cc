#include "kv_cache.h"

#include <algorithm>

namespace kvf {

std::shared_ptr<KvPool> KvPool::create(Device* device, const KvPoolSpec& spec, Status* st) {
  auto pool = std::shared_ptr<KvPool>(new KvPool(device, spec));
  const size_t bytes = static_cast<size_t>(spec.num_pages * spec.page_size * spec.kv_heads * spec.head_dim) * dtype_size(spec.dtype);
  pool->k_ = Buffer::create(device, bytes, st);
  if (!pool->k_) return nullptr;
  pool->v_ = Buffer::create(device, bytes, st);
  if (!pool->v_) return nullptr;
  pool->refs_.assign(static_cast<size_t>(spec.num_pages), 0);
  pool->free_.reserve(static_cast<size_t>(spec.num_pages));
  for (int64_t p = spec.num_pages - 1; p >= 0; --p) pool->free_.push_back(static_cast<int32_t>(p));
  return pool;
}

Status KvPool::acquire(int64_t n, std::vector<int32_t>* pages) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n > static_cast<int64_t>(free_.size())) {
    return out_of_memory("KV cache is full: " + std::to_string(n) + " more page(s) of " + std::to_string(spec_.page_size) +
                         " tokens needed, " + std::to_string(free_.size()) + " of " + std::to_string(spec_.num_pages) +
                         " free (raise kvCacheTokens, or free sequences)");
  }
  for (int64_t i = 0; i < n; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    refs_[p] = 1;
    pages->push_back(p);
  }
  return Status::Ok();
}

void KvPool::retain(int32_t page) {
  std::lock_guard<std::mutex> lock(mu_);
  ++refs_[page];
}

void KvPool::release(int32_t page) {
  std::lock_guard<std::mutex> lock(mu_);
  if (refs_[page] > 0 && --refs_[page] == 0) free_.push_back(page);
}

int64_t KvPool::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size());
}

int32_t LayerKv::page_rows(size_t i, int64_t page_size) const {
  const int64_t first = static_cast<int64_t>(i) * page_size;
  const int64_t last = std::min(slots(), first + page_size);
  if (holes == 0 || last <= first || positions[static_cast<size_t>(last - 1)] != kHole) return static_cast<int32_t>(page_size);
  int64_t j = first;
  while (j < last && positions[static_cast<size_t>(j)] != kHole) ++j;
  return static_cast<int32_t>(j - first);
}

KvBlock::~KvBlock() {
  for (const auto& layer : pages)
    for (int32_t p : layer) pool->release(p);
}

Sequence::Sequence(std::shared_ptr<KvPool> pool) : pool_(std::move(pool)), layers_(static_cast<size_t>(pool_->spec().layers)) {}

Sequence::~Sequence() { clear(); }

Status Sequence::append(const std::vector<int32_t>& positions, std::vector<std::vector<int32_t>>* slots, int64_t layer_begin,
                        int64_t layer_end) {
  const int64_t ps = pool_->spec().page_size;
  const int64_t n = static_cast<int64_t>(positions.size());
  const size_t lb = static_cast<size_t>(layer_begin);
  const size_t le = layer_end < 0 ? layers_.size() : static_cast<size_t>(layer_end);
  if (lb > le || le > layers_.size()) return invalid_argument("append: layer range out of bounds");
  // Acquire every page first so a failure leaves the sequence untouched.
  int64_t needed = 0;
  for (size_t li = lb; li < le; ++li) {
    const LayerKv& l = layers_[li];
    const int64_t have = static_cast<int64_t>(l.pages.size()) * ps;
    if (l.slots() + n > have) needed += (l.slots() + n - have + ps - 1) / ps;
  }
  std::vector<int32_t> fresh;
  KVF_RETURN_IF_ERROR(pool_->acquire(needed, &fresh));
  size_t next = 0;
  if (slots) slots->assign(layers_.size(), {});
  for (size_t li = lb; li < le; ++li) {
    LayerKv& l = layers_[li];
    while (static_cast<int64_t>(l.pages.size()) * ps < l.slots() + n) {
      l.pages.push_back(fresh[next]);
      l.v_pages.push_back(fresh[next++]);
    }
    if (slots) {
      auto& s = (*slots)[li];
      s.reserve(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t slot = l.slots() + i;
        s.push_back(static_cast<int32_t>(l.pages[slot / ps] * ps + slot % ps));
      }
    }
    for (int32_t p : positions) l.positions.push_back(p + l.shift);
  }
  return Status::Ok();
}

void Sequence::truncate(int64_t n, int64_t layer_begin, int64_t layer_end) {
  const int64_t ps = pool_->spec().page_size;
  const size_t le = layer_end < 0 ? layers_.size() : std::min(layers_.size(), static_cast<size_t>(layer_end));
  for (size_t li = static_cast<size_t>(std::max<int64_t>(0, layer_begin)); li < le; ++li) {
    LayerKv& l = layers_[li];
    for (int64_t dropped = 0; dropped < n && l.slots() > l.attached;) {
      if (l.positions.back() == kHole) --l.holes;
      else ++dropped;
      l.positions.pop_back();
    }
    release_tail(l, static_cast<size_t>((l.slots() + ps - 1) / ps));
  }
}

// Releases the layer's pages past the first `keep` (both tables).
void Sequence::release_tail(LayerKv& l, size_t keep) {
  while (l.pages.size() > keep) {
    pool_->release(l.pages.back());
    if (l.v_pages.back() != l.pages.back()) pool_->release(l.v_pages.back());
    l.pages.pop_back();
    l.v_pages.pop_back();
  }
}

void Sequence::release_pages(LayerKv& l) {
  for (size_t i = 0; i < l.pages.size(); ++i) {
    pool_->release(l.pages[i]);
    if (l.v_pages[i] != l.pages[i]) pool_->release(l.v_pages[i]);
  }
  l.pages.clear();
  l.v_pages.clear();
  l.positions.clear();
  l.holes = 0;
  l.spans.clear();
  l.attached = 0;
  l.shift = 0;
}

void Sequence::clear() {
  for (LayerKv& l : layers_) release_pages(l);
  split_kv_ = false;
  carry.reset();
  carry_rows = 0;
  history.clear();
}

Status Sequence::attach(const std::vector<BlockPlacement>& blocks, std::vector<RerotateRun>* moves,
                        std::vector<int32_t>* move_positions) {
  const int64_t ps = pool_->spec().page_size;
  const size_t L = layers_.size();
  for (const LayerKv& l : layers_)
    if (l.slots() != 0) return invalid_argument("attach: the sequence is not empty");
  // Moved blocks take key pages of their own: count and acquire them first (all or nothing).
  int64_t needed = 0;
  std::vector<int64_t> shifts;
  for (const BlockPlacement& b : blocks) {
    if (!b.block || b.block->pool != pool_ || b.block->pages.size() != L) return invalid_argument("attach: the block belongs to another model");
    if (b.block->tokens() == 0) return invalid_argument("attach: the block is empty");
    const int64_t shift = static_cast<int64_t>(b.start) - b.block->positions[0][0];
    shifts.push_back(shift);
    if (shift != 0)
      for (const auto& pages : b.block->pages) needed += static_cast<int64_t>(pages.size());
  }
  std::vector<int32_t> fresh;
  KVF_RETURN_IF_ERROR(pool_->acquire(needed, &fresh));
  size_t next = 0;
  moves->clear();
  move_positions->clear();
  for (size_t bi = 0; bi < blocks.size(); ++bi) {
    const KvBlock& b = *blocks[bi].block;
    const int64_t shift = shifts[bi];
    if (shift != 0) split_kv_ = true;
    for (size_t li = 0; li < L; ++li) {
      LayerKv& l = layers_[li];
      const std::vector<int32_t>& pos = b.positions[li];
      const std::vector<int32_t>& pages = b.pages[li];
      l.spans.push_back(Span{static_cast<int32_t>(bi), static_cast<int64_t>(l.pages.size()), static_cast<int64_t>(pages.size()),
                             static_cast<int64_t>(pos.size()), shift != 0});
      for (size_t i = 0; i < pages.size(); ++i) {
        const size_t first = i * static_cast<size_t>(ps);
        const int32_t rows = static_cast<int32_t>(std::min<size_t>(static_cast<size_t>(ps), pos.size() - first));
        pool_->retain(pages[i]);  // values (and keys, when they stay) are read from the stored page
        if (shift == 0) {
          l.pages.push_back(pages[i]);
        } else {
          RerotateRun m;
          m.src_page = pages[i];
          m.dst_page = fresh[next];
          m.rows = rows;
          m.from = static_cast<int32_t>(move_positions->size());
          move_positions->insert(move_positions->end(), pos.begin() + static_cast<ptrdiff_t>(first),
                                 pos.begin() + static_cast<ptrdiff_t>(first) + rows);
          m.to = static_cast<int32_t>(move_positions->size());
          for (int32_t r = 0; r < rows; ++r) move_positions->push_back(static_cast<int32_t>(pos[first + r] + shift));
          moves->push_back(m);
          l.pages.push_back(fresh[next++]);
        }
        l.v_pages.push_back(pages[i]);
      }
      for (int32_t p : pos) l.positions.push_back(static_cast<int32_t>(p + shift));
      // The block's last page ends here: the rest of it is holes.
      while (l.slots() % ps != 0) {
        l.positions.push_back(kHole);
        ++l.holes;
      }
    }
  }
  for (LayerKv& l : layers_) l.attached = l.slots();
  return Status::Ok();
}

Status Sequence::drop_blocks(int64_t from_layer, const std::vector<int32_t>& blocks) {
  const int64_t ps = pool_->spec().page_size;
  if (from_layer < 0 || from_layer > static_cast<int64_t>(layers_.size())) return invalid_argument("dropBlocks: layer out of range");
  for (size_t li = static_cast<size_t>(from_layer); li < layers_.size(); ++li) {
    LayerKv& l = layers_[li];
    // Back to front, so earlier spans' page indices stay valid while later ones are erased.
    for (size_t si = l.spans.size(); si-- > 0;) {
      const Span sp = l.spans[si];
      if (std::find(blocks.begin(), blocks.end(), sp.block) == blocks.end()) continue;
      const auto p0 = static_cast<ptrdiff_t>(sp.first_page), p1 = static_cast<ptrdiff_t>(sp.first_page + sp.pages);
      for (ptrdiff_t i = p0; i < p1; ++i) {
        pool_->release(l.pages[static_cast<size_t>(i)]);
        if (l.v_pages[static_cast<size_t>(i)] != l.pages[static_cast<size_t>(i)]) pool_->release(l.v_pages[static_cast<size_t>(i)]);
      }
      l.pages.erase(l.pages.begin() + p0, l.pages.begin() + p1);
      l.v_pages.erase(l.v_pages.begin() + p0, l.v_pages.begin() + p1);
      l.positions.erase(l.positions.begin() + p0 * ps, l.positions.begin() + p1 * ps);
      l.holes -= sp.pages * ps - sp.tokens;
      l.attached -= sp.pages * ps;
      l.spans.erase(l.spans.begin() + static_cast<ptrdiff_t>(si));
      for (size_t sj = si; sj < l.spans.size(); ++sj) l.spans[sj].first_page -= sp.pages;
    }
  }
  return Status::Ok();
}

Status Sequence::move_blocks(int64_t from_layer, const std::vector<std::pair<int32_t, int32_t>>& new_starts,
                             std::vector<RerotateRun>* moves, std::vector<int32_t>* move_positions) {
  const int64_t ps = pool_->spec().page_size;
  if (from_layer < 0 || from_layer > static_cast<int64_t>(layers_.size())) return invalid_argument("moveBlocks: layer out of range");
  auto target = [&](const LayerKv& l, const Span& sp) -> int64_t {  // the shift, 0: stays
    for (const auto& [b, start] : new_starts)
      if (b == sp.block) return static_cast<int64_t>(start) - l.positions[static_cast<size_t>(sp.first_page * ps)];
    return 0;
  };
  // Pages of their own for the keys that move off stored pages: all or nothing.
  int64_t needed = 0;
  for (size_t li = static_cast<size_t>(from_layer); li < layers_.size(); ++li)
    for (const Span& sp : layers_[li].spans)
      if (!sp.own_keys && target(layers_[li], sp) != 0) needed += sp.pages;
  std::vector<int32_t> fresh;
  KVF_RETURN_IF_ERROR(pool_->acquire(needed, &fresh));
  size_t next = 0;
  for (size_t li = static_cast<size_t>(from_layer); li < layers_.size(); ++li) {
    LayerKv& l = layers_[li];
    for (Span& sp : l.spans) {
      const int64_t shift = target(l, sp);
      if (shift == 0) continue;
      for (int64_t i = 0; i < sp.pages; ++i) {
        const size_t page = static_cast<size_t>(sp.first_page + i);
        const size_t first = page * static_cast<size_t>(ps);
        const int32_t rows = static_cast<int32_t>(std::min<int64_t>(ps, sp.tokens - i * ps));
        RerotateRun m;
        m.src_page = l.pages[page];
        // The stored page stays in the value table (its reference now counts there).
        m.dst_page = sp.own_keys ? l.pages[page] : fresh[next++];
        m.rows = rows;
        m.from = static_cast<int32_t>(move_positions->size());
        move_positions->insert(move_positions->end(), l.positions.begin() + static_cast<ptrdiff_t>(first),
                               l.positions.begin() + static_cast<ptrdiff_t>(first) + rows);
        m.to = static_cast<int32_t>(move_positions->size());
        for (int32_t r = 0; r < rows; ++r) {
          int32_t& p = l.positions[first + static_cast<size_t>(r)];
          p = static_cast<int32_t>(p + shift);
          move_positions->push_back(p);
        }
        moves->push_back(m);
        l.pages[page] = m.dst_page;
      }
      if (!sp.own_keys) split_kv_ = true;
      sp.own_keys = true;
    }
  }
  return Status::Ok();
}

namespace {

// Runs with separate from/to position lists (joined at the end): a row that continues the last
// run (same head and pages, next rows, both positions appended last) only grows it.
struct RunBuilder {
  std::vector<RerotateRun>* runs;
  std::vector<int32_t> from, to;
  size_t first;
  explicit RunBuilder(std::vector<RerotateRun>* r) : runs(r), first(r->size()) {}
  void add(int32_t src_page, int32_t src_row, int32_t dst_page, int32_t dst_row, int32_t head, int32_t from_pos, int32_t to_pos) {
    if (runs->size() > first) {
      RerotateRun& last = runs->back();
      if (last.head == head && last.src_page == src_page && last.dst_page == dst_page && last.src_row + last.rows == src_row &&
          last.dst_row + last.rows == dst_row && last.from + last.rows == static_cast<int32_t>(from.size())) {
        ++last.rows;
        from.push_back(from_pos);
        to.push_back(to_pos);
        return;
      }
    }
    RerotateRun r;
    r.src_page = src_page;
    r.src_row = src_row;
    r.dst_page = dst_page;
    r.dst_row = dst_row;
    r.rows = 1;
    r.head = head;
    r.from = static_cast<int32_t>(from.size());
    r.to = static_cast<int32_t>(to.size());
    from.push_back(from_pos);
    to.push_back(to_pos);
    runs->push_back(r);
  }
  // Appends the lists to *positions and points the runs at them.
  void finish(std::vector<int32_t>* positions) {
    const int32_t f0 = static_cast<int32_t>(positions->size());
    positions->insert(positions->end(), from.begin(), from.end());
    const int32_t t0 = static_cast<int32_t>(positions->size());
    positions->insert(positions->end(), to.begin(), to.end());
    for (size_t i = first; i < runs->size(); ++i) {
      (*runs)[i].from += f0;
      (*runs)[i].to += t0;
    }
  }
};

}  // namespace

Status Sequence::compact(int64_t layer, const std::vector<int32_t>& keep, const std::vector<int32_t>& new_positions,
                         std::vector<int32_t>* new_slots, std::vector<RerotateRun>* key_moves, std::vector<RerotateRun>* value_moves,
                         std::vector<int32_t>* positions) {
  if (layer < 0 || layer >= static_cast<int64_t>(layers_.size())) return invalid_argument("compact: layer out of range");
  LayerKv& l = layers_[static_cast<size_t>(layer)];
  if (l.attached > 0 || l.holes > 0) return unsupported("compact: a layer holding attached blocks is not compacted");
  if (keep.size() != new_positions.size()) return invalid_argument("compact: one position per kept slot");
  const int64_t ps = pool_->spec().page_size;
  const int64_t n = static_cast<int64_t>(keep.size());
  std::vector<char> kept(static_cast<size_t>(l.slots()), 0);
  for (int32_t s : keep) {
    if (s < 0 || s >= l.slots()) return invalid_argument("compact: slot " + std::to_string(s) + " out of range");
    if (kept[static_cast<size_t>(s)]) return invalid_argument("compact: slot " + std::to_string(s) + " kept twice");
    kept[static_cast<size_t>(s)] = 1;
  }
  for (int32_t p : new_positions)
    if (p < 0) return invalid_argument("compact: positions are non-negative");
  // Freed slots below the new length, ascending: kept slots from the tail fill them in order.
  std::vector<int32_t> holes;
  for (int64_t s = 0; s < n; ++s)
    if (!kept[static_cast<size_t>(s)]) holes.push_back(static_cast<int32_t>(s));
  size_t next_hole = 0;
  new_slots->assign(keep.size(), 0);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  // Kept slots in ascending order: consecutive rows of one page pair join one run.
  std::vector<size_t> order(keep.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keep[a] < keep[b]; });
  RunBuilder keys(key_moves), values(value_moves);
  for (size_t i : order) {
    const int32_t src = keep[i];
    const int32_t dst = src < n ? src : holes[next_hole++];
    (*new_slots)[i] = dst;
    pos[static_cast<size_t>(dst)] = new_positions[i];
    const int32_t from_pos = l.positions[static_cast<size_t>(src)];
    if (src == dst && from_pos == new_positions[i]) continue;
    const int32_t src_page = l.pages[static_cast<size_t>(src / ps)], dst_page = l.pages[static_cast<size_t>(dst / ps)];
    const int32_t src_row = static_cast<int32_t>(src % ps), dst_row = static_cast<int32_t>(dst % ps);
    keys.add(src_page, src_row, dst_page, dst_row, 0, from_pos, new_positions[i]);
    // Values move by copying (the same position on both sides).
    if (src != dst) values.add(src_page, src_row, dst_page, dst_row, 0, new_positions[i], new_positions[i]);
  }
  keys.finish(positions);
  values.finish(positions);
  // The queued moves read the tail's pages: they stay referenced by the job (released here,
  // handed out again only after it, on the same queue).
  l.positions.assign(pos.begin(), pos.end());
  release_tail(l, static_cast<size_t>((n + ps - 1) / ps));
  return Status::Ok();
}


Status Sequence::gather_heads(int64_t layer, const std::vector<int32_t>& sources, const std::vector<int32_t>& new_positions, HeadGather* out) {
  if (layer < 0 || layer >= static_cast<int64_t>(layers_.size())) return invalid_argument("gather_heads: layer out of range");
  LayerKv& l = layers_[static_cast<size_t>(layer)];
  if (l.attached > 0 || l.holes > 0) return unsupported("gather_heads: a layer holding attached blocks is not compacted");
  const int64_t heads = pool_->spec().kv_heads, ps = pool_->spec().page_size;
  const int64_t n = static_cast<int64_t>(new_positions.size());
  if (n > l.slots()) return invalid_argument("gather_heads: " + std::to_string(n) + " slots asked of a layer holding " + std::to_string(l.slots()));
  if (static_cast<int64_t>(sources.size()) != heads * n) return invalid_argument("gather_heads: expected kv_heads x slots sources");
  for (int32_t p : new_positions)
    if (p < 0) return invalid_argument("gather_heads: positions are non-negative");
  // Each head's moved slots (source != destination), counted to size the scratch.
  std::vector<char> used(static_cast<size_t>(l.slots()));
  int64_t staged = 0;
  for (int64_t h = 0; h < heads; ++h) {
    std::fill(used.begin(), used.end(), 0);
    int64_t moved = 0;
    for (int64_t s = 0; s < n; ++s) {
      const int32_t src = sources[static_cast<size_t>(h * n + s)];
      if (src < 0 || src >= l.slots()) return invalid_argument("gather_heads: source slot " + std::to_string(src) + " out of range");
      if (used[static_cast<size_t>(src)]) return invalid_argument("gather_heads: slot " + std::to_string(src) + " is a source twice for one head");
      used[static_cast<size_t>(src)] = 1;
      if (src != s) ++moved;
    }
    staged = std::max(staged, moved);
  }
  std::vector<int32_t> scratch;
  if (staged > 0) KVF_RETURN_IF_ERROR(pool_->acquire((staged + ps - 1) / ps, &scratch));
  RunBuilder stage_k(&out->stage_k), stage_v(&out->stage_v), place(&out->place);
  auto page_of = [&](int64_t slot) { return l.pages[static_cast<size_t>(slot / ps)]; };
  auto row_of = [&](int64_t slot) { return static_cast<int32_t>(slot % ps); };
  std::vector<int64_t> next(static_cast<size_t>(heads), 0);  // each head's next scratch row
  for (int64_t s = 0; s < n; ++s) {
    const int32_t to_pos = new_positions[static_cast<size_t>(s)];
    const int32_t pos = l.positions[static_cast<size_t>(s)];
    bool all_stay = true;
    for (int64_t h = 0; h < heads && all_stay; ++h) all_stay = sources[static_cast<size_t>(h * n + s)] == s;
    if (all_stay) {
      // Every head keeps this slot: one all-heads rotation in place (nothing when it stays put).
      if (pos != to_pos) stage_k.add(page_of(s), row_of(s), page_of(s), row_of(s), 0, pos, to_pos);
      continue;
    }
    for (int64_t h = 0; h < heads; ++h) {
      const int32_t src = sources[static_cast<size_t>(h * n + s)];
      const int32_t head = static_cast<int32_t>(h + 1);
      const int32_t from_pos = l.positions[static_cast<size_t>(src)];
      if (src == s) {
        if (from_pos != to_pos) stage_k.add(page_of(s), row_of(s), page_of(s), row_of(s), head, from_pos, to_pos);
        continue;
      }
      const int64_t r = next[static_cast<size_t>(h)]++;
      const int32_t sp = scratch[static_cast<size_t>(r / ps)], sr = static_cast<int32_t>(r % ps);
      stage_k.add(page_of(src), row_of(src), sp, sr, head, from_pos, to_pos);
      stage_v.add(page_of(src), row_of(src), sp, sr, head, to_pos, to_pos);
      place.add(sp, sr, page_of(s), row_of(s), head, to_pos, to_pos);
    }
  }
  out->positions.clear();
  stage_k.finish(&out->positions);
  stage_v.finish(&out->positions);
  place.finish(&out->positions);
  l.positions.assign(new_positions.begin(), new_positions.end());
  out->released = std::move(scratch);
  const size_t keep = static_cast<size_t>((n + ps - 1) / ps);
  while (l.pages.size() > keep) {
    out->released.push_back(l.pages.back());
    if (l.v_pages.back() != l.pages.back()) out->released.push_back(l.v_pages.back());
    l.pages.pop_back();
    l.v_pages.pop_back();
  }
  return Status::Ok();
}

void Sequence::set_shift(int64_t from_layer, int32_t shift) {
  for (size_t li = static_cast<size_t>(std::max<int64_t>(0, from_layer)); li < layers_.size(); ++li) layers_[li].shift = shift;
}

Status Sequence::export_block(int64_t from_token, std::shared_ptr<KvBlock>* out) const {
  const int64_t ps = pool_->spec().page_size;
  auto block = std::make_shared<KvBlock>();
  block->pool = pool_;
  for (const LayerKv& l : layers_) {
    // The slot of token from_token: slots before it hold from_token tokens and some holes.
    int64_t slot = 0;
    for (int64_t seen = 0; slot < l.slots() && (seen < from_token || l.positions[static_cast<size_t>(slot)] == kHole); ++slot)
      if (l.positions[static_cast<size_t>(slot)] != kHole) ++seen;
    if (slot % ps != 0) return invalid_argument("export_block: token " + std::to_string(from_token) + " does not start a page");
    if (slot >= l.slots()) return invalid_argument("export_block: no tokens from " + std::to_string(from_token));
    std::vector<int32_t> pos(l.positions.begin() + slot, l.positions.end());
    for (int32_t p : pos)
      if (p == kHole) return invalid_argument("export_block: the tokens to export hold a hole");
    std::vector<int32_t> pages(l.pages.begin() + slot / ps, l.pages.end());
    for (size_t i = 0; i < pages.size(); ++i)
      if (l.v_pages[static_cast<size_t>(slot / ps) + i] != pages[i]) return invalid_argument("export_block: the tokens to export lie in moved pages");
    for (int32_t p : pages) pool_->retain(p);
    block->pages.push_back(std::move(pages));
    block->positions.push_back(std::move(pos));
  }
  *out = std::move(block);
  return Status::Ok();
}

}  // namespace kvf
