// The forward step. One job on the device queue per step: embeddings, then per layer
// RMSNorm -> q/k/v projections (+bias) -> RoPE at the tokens' positions -> write k/v into the
// layer's pages -> paged attention (within the sliding window on sliding layers) -> output
// projection (+bias) + residual -> RMSNorm -> SwiGLU MLP (+biases) + residual; then the final
// norm and the LM head for the rows whose logits were asked for.
// Every op goes through the Backend, so the same code drives the CPU and CUDA kernels.
#include "model.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

namespace kvf {
namespace {

// Host-side description of a step, built on the JS thread and moved into the job.
struct StepPlan {
  std::vector<StepRequest> batch;
  int64_t total = 0;                       // query rows (tokens fed this step)
  std::vector<int32_t> ints;               // every i32 array below, packed: one upload
  size_t ids = 0, positions = 0, q_start = 0, kv_len = 0, visible = 0;
  std::vector<size_t> slots, table_start, page_table;  // per layer offsets into ints
  std::vector<int64_t> table_len;          // per layer page-table length
  std::vector<int64_t> v_page_table;       // per layer offset into ints, -1: values share the key pages
  std::vector<int64_t> page_rows;          // per layer offset into ints, -1: no holes
  std::vector<int32_t> max_kv;             // per layer
  std::vector<int64_t> first_visible;      // per layer offset into ints, -1: the layer does not slide
  std::vector<size_t> layer_positions;     // per layer offset into ints of the tokens' positions
  int64_t layer_begin = 0, layer_end = 0;  // the layers this step runs
  BufferRef carry_in, carry_out;           // hidden state from / for a step over other layers
  bool column_sums = false;                // some request asks for column sums
  bool sums_per_head = false;              // ... per query head (then every request's are, reduced on the host)
  int64_t log_decay = -1;                  // offset into floats of (seqs) ln beta, -1: no EMA weighting
  int64_t last_rows = -1;                  // offset into ints of (seqs) rows counted in the sums, -1: all
  bool own_freq = false;                   // some request brings its own RoPE frequencies
  // Range masses, when some request asks: per layer offset into ints of (seqs, num_ranges, 2)
  // ranges (a request with fewer ranges padded with empty ones); num_ranges 0: none asked.
  int64_t num_ranges = 0;
  std::vector<size_t> mass_ranges;
  // Two-part attention, when some request asks: per layer offset into ints of (seqs) ContextSplit
  // (requests without one get an empty range); empty: none asked.
  std::vector<size_t> ctx_split;
  std::vector<float> floats;               // per-request RoPE frequencies, packed: one upload
  std::vector<int64_t> inv_freq;           // per request offset into floats, -1: the model's
  std::vector<int32_t> logit_rows;         // rows of the final hidden state to project
  std::vector<std::pair<int32_t, int32_t>> logit_range;  // per request [first, count) in logit_rows
  // Sampling, on the device: one row per request that samples (its last logit row), with its
  // parameters and penalised ids packed into `ints` too, so the step uploads once.
  std::vector<int32_t> sample_rows;        // per sampled row: its row in the logits
  std::vector<int32_t> sample_of;          // per request: its sampled row, or -1
  size_t sample_params = 0, penalty_start = 0, penalty_ids = 0;
};

size_t push(std::vector<int32_t>& v, const std::vector<int32_t>& xs) {
  const size_t at = v.size();
  v.insert(v.end(), xs.begin(), xs.end());
  return at;
}

// Packs plain structs into the i32 upload at an 8-byte aligned offset (the buffer itself is at
// least 64-byte aligned), for kernels that read them as structs.
template <typename T>
size_t push_structs(std::vector<int32_t>& v, const std::vector<T>& xs) {
  static_assert(sizeof(T) % 8 == 0, "packed structs keep 8-byte alignment");
  if (v.size() % 2) v.push_back(0);
  const size_t at = v.size();
  v.resize(at + xs.size() * sizeof(T) / sizeof(int32_t));
  if (!xs.empty()) std::memcpy(v.data() + at, xs.data(), xs.size() * sizeof(T));
  return at;
}

class Scratch {
 public:
  explicit Scratch(Device* d) : device_(d) {}
  // Allocates n elements of dtype; on failure records the status and returns null.
  void* get(int64_t n, DType t) {
    if (!st_.ok()) return nullptr;
    BufferRef b = Buffer::create(device_, static_cast<size_t>(n) * dtype_size(t), &st_);
    if (!b) return nullptr;
    held_.push_back(b);
    return b->data();
  }
  const Status& status() const { return st_; }

 private:
  Device* device_;
  Status st_;
  std::vector<BufferRef> held_;
};

Status run_forward(Backend& be, Device* dev, const ModelSpec& s, const ModelWeights& w, const KvPool& pool, StepPlan& plan,
                   StepResult* result) {
  const int64_t T = plan.total;
  const int64_t D = s.hidden, F = s.intermediate, H = s.heads, Hkv = s.kv_heads, hd = s.head_dim;
  const DType act = s.act_dtype;
  Scratch scratch(dev);
  int32_t* ints = static_cast<int32_t*>(scratch.get(static_cast<int64_t>(plan.ints.size()), DType::i32));
  float* floats = plan.floats.empty() ? nullptr : static_cast<float*>(scratch.get(static_cast<int64_t>(plan.floats.size()), DType::f32));
  void* x = scratch.get(T * D, act);
  void* h = scratch.get(T * D, act);
  void* q = scratch.get(T * H * hd, act);
  void* k = scratch.get(T * Hkv * hd, act);
  void* v = scratch.get(T * Hkv * hd, act);
  void* attn = scratch.get(T * H * hd, act);
  void* o = scratch.get(T * D, act);
  void* g = scratch.get(T * F, act);
  void* u = scratch.get(T * F, act);
  // Range masses of every layer: (layers, T, H, num_ranges) f32.
  const int64_t NR = plan.num_ranges;
  float* masses = NR > 0 ? static_cast<float*>(scratch.get(s.layers * T * H * NR, DType::f32)) : nullptr;
  // Column sums of every layer: (seqs, kv_heads or heads, max_kv of the layer) f32 each, added
  // into: zeroed.
  const int64_t seqs_n = static_cast<int64_t>(plan.batch.size());
  const int64_t sum_heads = plan.sums_per_head ? H : Hkv;
  std::vector<int64_t> sums_at;
  float* sums = nullptr;
  if (plan.column_sums) {
    int64_t n = 0;
    for (int64_t l = 0; l < s.layers; ++l) {
      sums_at.push_back(n);
      n += seqs_n * sum_heads * plan.max_kv[static_cast<size_t>(l)];
    }
    sums = static_cast<float*>(scratch.get(std::max<int64_t>(1, n), DType::f32));
    KVF_RETURN_IF_ERROR(scratch.status());
    sums_at.push_back(n);
    std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
    if (n > 0) KVF_RETURN_IF_ERROR(be.copy_from_host(sums, zeros.data(), zeros.size() * sizeof(float)));
  }
  KVF_RETURN_IF_ERROR(scratch.status());
  // Not waited for: the plan outlives the step, and the step's one wait comes at its end.
  KVF_RETURN_IF_ERROR(be.copy_from_host_async(ints, plan.ints.data(), plan.ints.size() * sizeof(int32_t)));
  if (floats != nullptr) KVF_RETURN_IF_ERROR(be.copy_from_host_async(floats, plan.floats.data(), plan.floats.size() * sizeof(float)));

  auto linear = [&](const void* in, const Weight& wt, void* out, int64_t n, int64_t kdim) {
    MatmulArgs a;
    a.a = in;
    a.a_dtype = act;
    a.b = wt.buf->data();
    a.b_dtype = wt.dtype;
    a.c = out;
    a.c_dtype = act;
    a.m = T;
    a.n = n;
    a.k = kdim;
    a.trans_b = true;
    return be.matmul(a);
  };
  auto add_into = [&](void* dst, const void* src, DType src_dtype, int64_t rows, int64_t cols, bool broadcast) {
    AddArgs a;
    a.a = dst;
    a.out = dst;
    a.dtype = act;
    a.b = src;
    a.b_dtype = src_dtype;
    a.rows = rows;
    a.cols = cols;
    a.broadcast_b = broadcast;
    return be.add(a);
  };
  auto rmsnorm = [&](const void* in, const Weight& wt, void* out, int64_t rows) {
    RmsNormArgs a;
    a.x = in;
    a.y = out;
    a.dtype = act;
    a.weight = wt.buf->data();
    a.weight_dtype = wt.dtype;
    a.rows = rows;
    a.dim = D;
    a.eps = s.rms_eps;
    return be.rmsnorm(a);
  };
  // Rows [row0, row0 + rows) rotated with the given frequencies.
  auto rope_rows = [&](void* t, int64_t heads, int64_t row0, int64_t rows, const float* inv_freq, int64_t layer) {
    RopeArgs a;
    a.in = static_cast<char*>(t) + row0 * heads * hd * static_cast<int64_t>(dtype_size(act));
    a.out = const_cast<void*>(a.in);
    a.dtype = act;
    a.tokens = rows;
    a.heads = heads;
    a.head_dim = hd;
    a.positions = ints + plan.layer_positions[static_cast<size_t>(layer)] + row0;
    a.inv_freq = inv_freq;
    a.layout = s.rope_layout;
    a.attn_factor = s.rope_attn_factor;
    return be.rope(a);
  };
  const float* model_freq = static_cast<const float*>(w.inv_freq->data());
  // One call for the step, or one per request when some request brings its own frequencies.
  auto rope = [&](void* t, int64_t heads, int64_t layer) {
    if (!plan.own_freq) return rope_rows(t, heads, 0, T, model_freq, layer);
    int64_t row0 = 0;
    for (size_t i = 0; i < plan.batch.size(); ++i) {
      const int64_t rows = static_cast<int64_t>(plan.batch[i].tokens.size());
      const float* f = plan.inv_freq[i] < 0 ? model_freq : floats + plan.inv_freq[i];
      if (rows > 0) KVF_RETURN_IF_ERROR(rope_rows(t, heads, row0, rows, f, layer));
      row0 += rows;
    }
    return Status::Ok();
  };

  if (plan.carry_in) {
    KVF_RETURN_IF_ERROR(plan.carry_in->error());
    KVF_RETURN_IF_ERROR(be.copy_on_device(x, plan.carry_in->data(), static_cast<size_t>(T * D) * dtype_size(act)));
  } else {
    EmbeddingArgs a;
    a.table = w.embed.buf->data();
    a.table_dtype = w.embed.dtype;
    a.ids = ints + plan.ids;
    a.out = x;
    a.out_dtype = act;
    a.tokens = T;
    a.vocab = s.vocab;
    a.dim = D;
    KVF_RETURN_IF_ERROR(be.embedding(a));
  }
  const int64_t seqs = static_cast<int64_t>(plan.batch.size());
  for (int64_t l = plan.layer_begin; l < plan.layer_end; ++l) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    KVF_RETURN_IF_ERROR(rmsnorm(x, lw.attn_norm, h, T));
    KVF_RETURN_IF_ERROR(linear(h, lw.wq, q, H * hd, D));
    KVF_RETURN_IF_ERROR(linear(h, lw.wk, k, Hkv * hd, D));
    KVF_RETURN_IF_ERROR(linear(h, lw.wv, v, Hkv * hd, D));
    if (lw.bq) KVF_RETURN_IF_ERROR(add_into(q, lw.bq.buf->data(), lw.bq.dtype, T, H * hd, true));
    if (lw.bk) KVF_RETURN_IF_ERROR(add_into(k, lw.bk.buf->data(), lw.bk.dtype, T, Hkv * hd, true));
    if (lw.bv) KVF_RETURN_IF_ERROR(add_into(v, lw.bv.buf->data(), lw.bv.dtype, T, Hkv * hd, true));
    KVF_RETURN_IF_ERROR(rope(q, H, l));
    KVF_RETURN_IF_ERROR(rope(k, Hkv, l));
    {
      KvWriteArgs a;
      a.k = k;
      a.v = v;
      a.src_dtype = act;
      a.k_pool = pool.k()->data();
      a.v_pool = pool.v()->data();
      a.pool_dtype = pool.spec().dtype;
      a.tokens = T;
      a.kv_heads = Hkv;
      a.head_dim = hd;
      a.page_size = pool.spec().page_size;
      a.num_pages = pool.spec().num_pages;
      a.slots = ints + plan.slots[static_cast<size_t>(l)];
      KVF_RETURN_IF_ERROR(be.kv_write(a));
    }
    {
      PagedAttentionArgs a;
      a.q = q;
      a.q_dtype = act;
      a.out = attn;
      a.out_dtype = act;
      a.k_pool = pool.k()->data();
      a.v_pool = pool.v()->data();
      a.kv_dtype = pool.spec().dtype;
      a.page_size = pool.spec().page_size;
      a.num_pages = pool.spec().num_pages;
      a.heads = H;
      a.kv_heads = Hkv;
      a.head_dim = hd;
      a.seqs = seqs;
      a.total_q = T;
      a.q_start = ints + plan.q_start;
      a.kv_len = ints + plan.kv_len + static_cast<size_t>(l * seqs);
      a.table_start = ints + plan.table_start[static_cast<size_t>(l)];
      a.page_table = ints + plan.page_table[static_cast<size_t>(l)];
      a.page_table_len = plan.table_len[static_cast<size_t>(l)];
      const int64_t vt = plan.v_page_table[static_cast<size_t>(l)], pr = plan.page_rows[static_cast<size_t>(l)];
      a.v_page_table = vt < 0 ? nullptr : ints + vt;
      a.page_rows = pr < 0 ? nullptr : ints + pr;
      a.max_kv = plan.max_kv[static_cast<size_t>(l)];
      a.visible = ints + plan.visible + static_cast<size_t>(l * T);
      const int64_t fv = plan.first_visible[static_cast<size_t>(l)];
      a.first_visible = fv < 0 ? nullptr : ints + fv;
      a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
      if (sums) (plan.sums_per_head ? a.attn_sum : a.kv_attn_sum) = sums + sums_at[static_cast<size_t>(l)];
      if (plan.log_decay >= 0) a.col_log_decay = floats + plan.log_decay;
      if (plan.last_rows >= 0) a.col_last_rows = ints + plan.last_rows;
      if (NR > 0) {
        a.mass_ranges = ints + plan.mass_ranges[static_cast<size_t>(l)];
        a.num_ranges = NR;
        a.range_mass = masses + l * T * H * NR;
      }
      if (!plan.ctx_split.empty())
        a.ctx_split = reinterpret_cast<const ContextSplit*>(ints + plan.ctx_split[static_cast<size_t>(l)]);
      KVF_RETURN_IF_ERROR(be.paged_attention(a));
    }
    KVF_RETURN_IF_ERROR(linear(attn, lw.wo, o, D, H * hd));
    if (lw.bo) KVF_RETURN_IF_ERROR(add_into(o, lw.bo.buf->data(), lw.bo.dtype, T, D, true));
    KVF_RETURN_IF_ERROR(add_into(x, o, act, T, D, false));
    KVF_RETURN_IF_ERROR(rmsnorm(x, lw.ffn_norm, h, T));
    KVF_RETURN_IF_ERROR(linear(h, lw.gate, g, F, D));
    KVF_RETURN_IF_ERROR(linear(h, lw.up, u, F, D));
    if (lw.b_gate) KVF_RETURN_IF_ERROR(add_into(g, lw.b_gate.buf->data(), lw.b_gate.dtype, T, F, true));
    if (lw.b_up) KVF_RETURN_IF_ERROR(add_into(u, lw.b_up.buf->data(), lw.b_up.dtype, T, F, true));
    {
      SiluMulArgs a;
      a.gate = g;
      a.up = u;
      a.out = g;  // elementwise: writing over the gate is safe
      a.dtype = act;
      a.n = T * F;
      KVF_RETURN_IF_ERROR(be.silu_mul(a));
    }
    KVF_RETURN_IF_ERROR(linear(g, lw.down, o, D, F));
    if (lw.b_down) KVF_RETURN_IF_ERROR(add_into(o, lw.b_down.buf->data(), lw.b_down.dtype, T, D, true));
    KVF_RETURN_IF_ERROR(add_into(x, o, act, T, D, false));
  }

  // Range masses, when asked for: one more wait, only then. Each request gets its rows and its
  // own ranges, (layers, rows, heads, its num_ranges).
  result->range_mass.assign(plan.batch.size(), {});
  if (NR > 0) {
    std::vector<float> host(static_cast<size_t>(s.layers * T * H * NR));
    KVF_RETURN_IF_ERROR(be.copy_to_host(host.data(), masses, host.size() * sizeof(float)));
    int64_t row0 = 0;
    for (size_t i = 0; i < plan.batch.size(); ++i) {
      const int64_t rows = static_cast<int64_t>(plan.batch[i].tokens.size()), nr = plan.batch[i].num_ranges;
      if (nr > 0) {
        std::vector<float>& out = result->range_mass[i];
        out.reserve(static_cast<size_t>(s.layers * rows * H * nr));
        for (int64_t l = 0; l < s.layers; ++l) {
          if (l < plan.layer_begin || l >= plan.layer_end) {  // not run by this step
            out.insert(out.end(), static_cast<size_t>(rows * H * nr), 0.0f);
            continue;
          }
          for (int64_t th = (l * T + row0) * H; th < (l * T + row0 + rows) * H; ++th)
            out.insert(out.end(), host.begin() + th * NR, host.begin() + th * NR + nr);
        }
      }
      row0 += rows;
    }
  }

  // Column sums, when asked for: each request's (kv_heads, its slots) of every layer.
  result->column_sums.assign(plan.batch.size(), {});
  if (sums) {
    std::vector<float> host(static_cast<size_t>(sums_at.back()));
    if (!host.empty()) KVF_RETURN_IF_ERROR(be.copy_to_host(host.data(), sums, host.size() * sizeof(float)));
    for (size_t i = 0; i < plan.batch.size(); ++i) {
      if (!plan.batch[i].column_sums) continue;
      std::vector<float>& out = result->column_sums[i];
      for (int64_t l = 0; l < s.layers; ++l) {
        const int64_t mk = plan.max_kv[static_cast<size_t>(l)];
        // The layer's slots for this request as planned (never the live sequence: the JS thread owns it).
        const int64_t slots = plan.ints[plan.kv_len + static_cast<size_t>(l) * plan.batch.size() + i];
        const int64_t n = std::min(slots, mk);
        const auto layer_at = host.begin() + sums_at[static_cast<size_t>(l)] + static_cast<int64_t>(i) * sum_heads * mk;
        if (!plan.sums_per_head || plan.batch[i].column_sums_per_head) {
          for (int64_t g = 0; g < sum_heads; ++g) out.insert(out.end(), layer_at + g * mk, layer_at + g * mk + n);
          continue;
        }
        // Per query head in this step, asked per KV head: each group's heads summed.
        const int64_t group = H / Hkv;
        for (int64_t g = 0; g < Hkv; ++g) {
          const size_t base = out.size();
          out.resize(base + static_cast<size_t>(n), 0.0f);
          for (int64_t hh = 0; hh < group; ++hh)
            for (int64_t j = 0; j < n; ++j) out[base + static_cast<size_t>(j)] += *(layer_at + (g * group + hh) * mk + j);
        }
      }
    }
  }

  // A step that stops before the last layer hands its hidden state to the next one.
  if (plan.carry_out) {
    KVF_RETURN_IF_ERROR(be.copy_on_device(plan.carry_out->data(), x, static_cast<size_t>(T * D) * dtype_size(act)));
    result->logits.assign(plan.batch.size(), {});
    result->sampled.assign(plan.batch.size(), -1);
    return be.synchronize();
  }

  // Logits only for the rows asked for: gather them, final norm, LM head; then the sampled
  // tokens. The host waits once per step: for one copy of the tokens (and the logits asked for).
  const int64_t R = static_cast<int64_t>(plan.logit_rows.size());
  const int64_t S = static_cast<int64_t>(plan.sample_rows.size());
  result->logits.assign(plan.batch.size(), {});
  result->sampled.assign(plan.batch.size(), -1);
  if (R == 0) return be.synchronize();
  void* xr = scratch.get(R * D, act);
  void* hr = scratch.get(R * D, act);
  // Logits (R x vocab f32) and the sampled ids (S i32) in one buffer: one copy brings both back.
  float* logits = static_cast<float*>(scratch.get(R * s.vocab + S, DType::f32));
  int32_t* sampled = reinterpret_cast<int32_t*>(logits + R * s.vocab);
  KVF_RETURN_IF_ERROR(scratch.status());
  const size_t row_bytes = static_cast<size_t>(D) * dtype_size(act);
  for (int64_t r = 0; r < R; ++r) {
    KVF_RETURN_IF_ERROR(be.copy_on_device(static_cast<char*>(xr) + r * row_bytes,
                                          static_cast<const char*>(x) + plan.logit_rows[r] * row_bytes, row_bytes));
  }
  KVF_RETURN_IF_ERROR(rmsnorm(xr, w.final_norm, hr, R));
  {
    MatmulArgs a;
    a.a = hr;
    a.a_dtype = act;
    a.b = w.lm_head.buf->data();
    a.b_dtype = w.lm_head.dtype;
    a.c = logits;
    a.c_dtype = DType::f32;
    a.m = R;
    a.n = s.vocab;
    a.k = D;
    a.trans_b = true;
    KVF_RETURN_IF_ERROR(be.matmul(a));
  }
  if (S > 0) {
    // A copy of each sampled row: the penalty rewrites it, and returned logits stay as computed.
    float* rows = static_cast<float*>(scratch.get(S * s.vocab, DType::f32));
    double* workspace = be.kind() == DeviceKind::cuda ? static_cast<double*>(scratch.get(2 * S * s.vocab, DType::f32)) : nullptr;
    KVF_RETURN_IF_ERROR(scratch.status());
    const size_t vocab_bytes = static_cast<size_t>(s.vocab) * sizeof(float);
    for (int64_t r = 0; r < S; ++r) {
      KVF_RETURN_IF_ERROR(be.copy_on_device(rows + r * s.vocab, logits + static_cast<int64_t>(plan.sample_rows[r]) * s.vocab, vocab_bytes));
    }
    SampleArgs a;
    a.logits = rows;
    a.rows = S;
    a.vocab = s.vocab;
    a.params = reinterpret_cast<const SampleParams*>(ints + plan.sample_params);
    a.penalty_start = ints + plan.penalty_start;
    a.penalty_ids = ints + plan.penalty_ids;
    a.out = sampled;
    a.workspace = workspace;
    KVF_RETURN_IF_ERROR(be.sample(a));
  }
  bool want_logits = false;
  for (const StepRequest& req : plan.batch) want_logits |= req.logits != StepRequest::Logits::none;
  std::vector<float> host(static_cast<size_t>(R * s.vocab + S));
  if (want_logits) {
    KVF_RETURN_IF_ERROR(be.copy_to_host(host.data(), logits, host.size() * sizeof(float)));
  } else {
    KVF_RETURN_IF_ERROR(be.copy_to_host(host.data() + R * s.vocab, sampled, static_cast<size_t>(S) * sizeof(int32_t)));
  }
  for (size_t i = 0; i < plan.batch.size(); ++i) {
    if (plan.sample_of[i] >= 0) std::memcpy(&result->sampled[i], host.data() + R * s.vocab + plan.sample_of[i], sizeof(int32_t));
    const auto [first, count] = plan.logit_range[i];
    if (count == 0 || plan.batch[i].logits == StepRequest::Logits::none) continue;
    result->logits[i].assign(host.begin() + static_cast<ptrdiff_t>(first) * s.vocab,
                             host.begin() + static_cast<ptrdiff_t>(first + count) * s.vocab);
  }
  return Status::Ok();
}

}  // namespace

Status Model::enqueue_step(std::vector<StepRequest> batch, std::function<void(Status, StepResult)> done,
                           std::function<bool()> cancelled) {
  auto plan = std::make_shared<StepPlan>();
  const size_t S = batch.size();
  const size_t L = static_cast<size_t>(spec_.layers);
  for (const StepRequest& r : batch) {
    if (r.num_ranges < 0 || r.mass_ranges.size() != L * static_cast<size_t>(std::max<int64_t>(0, r.num_ranges)) * 2)
      return invalid_argument("step: mass_ranges must hold layers x num_ranges [begin, end) pairs");
    if (!r.ctx_ranges.empty() && r.ctx_ranges.size() != L * 2)
      return invalid_argument("step: ctx_ranges must hold one [begin, end) pair per layer");
    if (!r.ctx_ranges.empty() && (r.num_ranges > 0 || r.column_sums))
      return unsupported("step: scores (range masses, column sums) are not defined for two-part (context) attention");
  }
  // A step over part of the layers holds one request (the rows of every op are its rows).
  plan->layer_begin = 0;
  plan->layer_end = static_cast<int64_t>(L);
  for (const StepRequest& r : batch) {
    const int64_t end = r.layer_end < 0 ? static_cast<int64_t>(L) : r.layer_end;
    if (r.layer_begin < 0 || r.layer_begin >= end || end > static_cast<int64_t>(L)) return invalid_argument("step: layers out of range");
    if ((r.layer_begin != 0 || end != static_cast<int64_t>(L)) && S != 1) return invalid_argument("step: a step over part of the layers holds one request");
    if (r.layer_begin > 0 && (!r.seq->carry || r.seq->carry_rows != static_cast<int64_t>(r.tokens.size())))
      return invalid_argument("step: a step from layer " + std::to_string(r.layer_begin) + " needs the hidden state of a step over the layers before it, for the same tokens");
    plan->layer_begin = r.layer_begin;
    plan->layer_end = end;
  }
  // Reserve slots; undo this batch's reservations if the pool runs dry part way.
  std::vector<std::vector<std::vector<int32_t>>> slots(S);
  std::vector<std::vector<int64_t>> before(S);
  for (size_t i = 0; i < S; ++i) {
    StepRequest& r = batch[i];
    for (const LayerKv& l : r.seq->layers()) before[i].push_back(l.slots());
    Status st = r.seq->append(r.positions, &slots[i], plan->layer_begin, plan->layer_end);
    if (!st.ok()) {
      for (size_t j = 0; j < i; ++j) batch[j].seq->truncate(static_cast<int64_t>(batch[j].tokens.size()));
      return st;
    }
  }
  std::vector<int32_t> ids, positions, q_start{0};
  for (const StepRequest& r : batch) {
    ids.insert(ids.end(), r.tokens.begin(), r.tokens.end());
    positions.insert(positions.end(), r.positions.begin(), r.positions.end());
    q_start.push_back(q_start.back() + static_cast<int32_t>(r.tokens.size()));
  }
  plan->total = static_cast<int64_t>(ids.size());
  plan->ids = push(plan->ints, ids);
  plan->positions = push(plan->ints, positions);
  // Layers in another coordinate frame (CacheFocus after pruning) place tokens `shift` further.
  for (size_t l = 0; l < L; ++l) {
    bool shifted = false;
    for (const StepRequest& r : batch) shifted |= r.seq->layers()[l].shift != 0;
    if (!shifted) {
      plan->layer_positions.push_back(plan->positions);
      continue;
    }
    std::vector<int32_t> p;
    for (const StepRequest& r : batch)
      for (int32_t x : r.positions) p.push_back(x + r.seq->layers()[l].shift);
    plan->layer_positions.push_back(push(plan->ints, p));
  }
  if (plan->layer_begin > 0) plan->carry_in = batch[0].seq->carry;
  if (plan->layer_end < static_cast<int64_t>(L)) {
    Status st;
    const int64_t rows = static_cast<int64_t>(batch[0].tokens.size());
    plan->carry_out = Buffer::create(device_, static_cast<size_t>(rows * spec_.hidden) * dtype_size(spec_.act_dtype), &st);
    if (!plan->carry_out) {
      batch[0].seq->truncate(rows, plan->layer_begin, plan->layer_end);
      return st;
    }
    batch[0].seq->carry = plan->carry_out;
    batch[0].seq->carry_rows = rows;
  }
  plan->q_start = push(plan->ints, q_start);
  // Per layer: kv lengths, visibility (slot-ordered causal), slots, page tables.
  std::vector<int32_t> kv_len, visible;
  for (size_t l = 0; l < L; ++l) {
    for (size_t i = 0; i < S; ++i) kv_len.push_back(static_cast<int32_t>(batch[i].seq->layers()[l].slots()));
    for (size_t i = 0; i < S; ++i) {
      for (size_t t = 0; t < batch[i].tokens.size(); ++t) visible.push_back(static_cast<int32_t>(before[i][l] + t + 1));
    }
  }
  plan->kv_len = push(plan->ints, kv_len);
  plan->visible = push(plan->ints, visible);
  // Sliding layers: a row at slot p (visible p + 1) sees slots j > p - window, as HF masks
  // kv_idx > q_idx - sliding_window. Slots past the window stay allocated in the pages.
  const int64_t T = static_cast<int64_t>(ids.size());
  for (size_t l = 0; l < L; ++l) {
    if (spec_.sliding_window <= 0 || !spec_.sliding_layers[l]) {
      plan->first_visible.push_back(-1);
      continue;
    }
    std::vector<int32_t> first(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t v = visible[l * static_cast<size_t>(T) + static_cast<size_t>(t)];
      first[static_cast<size_t>(t)] = static_cast<int32_t>(std::max<int64_t>(0, v - spec_.sliding_window));
    }
    plan->first_visible.push_back(static_cast<int64_t>(push(plan->ints, first)));
  }
  for (const StepRequest& r : batch) {
    plan->own_freq |= !r.inv_freq.empty();
    plan->inv_freq.push_back(r.inv_freq.empty() ? -1 : static_cast<int64_t>(plan->floats.size()));
    plan->floats.insert(plan->floats.end(), r.inv_freq.begin(), r.inv_freq.end());
  }
  // Sequences over stored documents add a value page table and the rows of pages that end in
  // holes; a step without them uploads neither, so attention runs as before.
  bool split_kv = false, holes = false;
  for (const StepRequest& r : batch) {
    split_kv |= r.seq->split_kv();
    for (const LayerKv& lk : r.seq->layers()) holes |= lk.holes > 0;
  }
  const int64_t ps = pool_->spec().page_size;
  for (size_t l = 0; l < L; ++l) {
    std::vector<int32_t> layer_slots, table, v_table, rows, table_start{0};
    int32_t max_kv = 0;
    for (size_t i = 0; i < S; ++i) {
      const LayerKv& lk = batch[i].seq->layers()[l];
      layer_slots.insert(layer_slots.end(), slots[i][l].begin(), slots[i][l].end());
      table.insert(table.end(), lk.pages.begin(), lk.pages.end());
      if (split_kv) v_table.insert(v_table.end(), lk.v_pages.begin(), lk.v_pages.end());
      if (holes)
        for (size_t p = 0; p < lk.pages.size(); ++p) rows.push_back(lk.page_rows(p, ps));
      table_start.push_back(static_cast<int32_t>(table.size()));
      max_kv = std::max(max_kv, static_cast<int32_t>(lk.slots()));
    }
    plan->slots.push_back(push(plan->ints, layer_slots));
    plan->table_start.push_back(push(plan->ints, table_start));
    plan->page_table.push_back(push(plan->ints, table));
    plan->v_page_table.push_back(split_kv ? static_cast<int64_t>(push(plan->ints, v_table)) : -1);
    plan->page_rows.push_back(holes ? static_cast<int64_t>(push(plan->ints, rows)) : -1);
    plan->table_len.push_back(static_cast<int64_t>(table.size()));
    plan->max_kv.push_back(max_kv);
  }
  // Range masses: each layer's (seqs, num_ranges, 2) table, requests without ranges (or with
  // fewer) padded with empty ranges.
  for (const StepRequest& r : batch) plan->num_ranges = std::max(plan->num_ranges, r.num_ranges);
  for (const StepRequest& r : batch) {
    plan->column_sums |= r.column_sums;
    plan->sums_per_head |= r.column_sums && r.column_sums_per_head;
  }
  bool windows = false;
  for (const StepRequest& r : batch) windows |= r.column_sums && r.score_rows > 0;
  if (windows) {
    std::vector<int32_t> rows;
    for (const StepRequest& r : batch) rows.push_back(r.column_sums ? static_cast<int32_t>(std::min<int64_t>(r.score_rows, INT32_MAX)) : 0);
    plan->last_rows = static_cast<int64_t>(push(plan->ints, rows));
  }
  bool decays = false;
  for (const StepRequest& r : batch) decays |= r.column_sums && r.score_decay > 0.0f && r.score_decay < 1.0f;
  if (decays) {
    plan->log_decay = static_cast<int64_t>(plan->floats.size());
    for (const StepRequest& r : batch)
      plan->floats.push_back(r.column_sums && r.score_decay > 0.0f && r.score_decay < 1.0f ? std::log(r.score_decay) : 0.0f);
  }
  if (plan->num_ranges > 0) {
    const size_t NR = static_cast<size_t>(plan->num_ranges);
    for (size_t l = 0; l < L; ++l) {
      std::vector<int32_t> table(S * NR * 2, 0);
      for (size_t i = 0; i < S; ++i) {
        const size_t nr = static_cast<size_t>(batch[i].num_ranges);
        if (nr > 0) std::copy_n(batch[i].mass_ranges.begin() + static_cast<ptrdiff_t>(l * nr * 2), nr * 2, table.begin() + static_cast<ptrdiff_t>(i * NR * 2));
      }
      plan->mass_ranges.push_back(push(plan->ints, table));
    }
  }
  // Two-part attention: each layer's (seqs) ContextSplit table. Scores are refused with it (the
  // kernels do), so a step that mixes them with a context fails rather than drops them.
  bool contexts = false;
  for (const StepRequest& r : batch) contexts |= !r.ctx_ranges.empty();
  if (contexts && (plan->num_ranges > 0 || plan->column_sums))
    return unsupported("step: scores (range masses, column sums) cannot share a step with two-part (context) attention");
  if (contexts) {
    for (size_t l = 0; l < L; ++l) {
      std::vector<ContextSplit> table(S);
      for (size_t i = 0; i < S; ++i) {
        const StepRequest& r = batch[i];
        if (r.ctx_ranges.empty()) continue;
        table[i] = ContextSplit{r.ctx_ranges[2 * l], r.ctx_ranges[2 * l + 1], r.ctx_temperature, r.ctx_scale};
      }
      plan->ctx_split.push_back(push_structs(plan->ints, table));
    }
  }
  for (size_t i = 0; i < S; ++i) {
    StepRequest& r = batch[i];
    const int32_t first = static_cast<int32_t>(plan->logit_rows.size());
    const int32_t n = static_cast<int32_t>(r.tokens.size());
    if (r.logits == StepRequest::Logits::all) {
      for (int32_t t = 0; t < n; ++t) plan->logit_rows.push_back(q_start[i] + t);
    } else if ((r.logits == StepRequest::Logits::last || r.sample) && n > 0) {
      plan->logit_rows.push_back(q_start[i] + n - 1);
    }
    plan->logit_range.emplace_back(first, static_cast<int32_t>(plan->logit_rows.size()) - first);
    r.seq->history.insert(r.seq->history.end(), r.tokens.begin(), r.tokens.end());
  }
  // Sampling parameters, the draws and the penalised ids, per sampled row. The draw is taken
  // here, on the JS thread, in step order: the same generator values as sampling on the host.
  std::vector<SampleParams> params;
  std::vector<int32_t> penalty_start{0}, penalty_ids;
  for (size_t i = 0; i < S; ++i) {
    const StepRequest& r = batch[i];
    const auto [first, count] = plan->logit_range[i];
    if (!r.sample || count == 0) {
      plan->sample_of.push_back(-1);
      continue;
    }
    plan->sample_of.push_back(static_cast<int32_t>(plan->sample_rows.size()));
    plan->sample_rows.push_back(first + count - 1);
    params.push_back(sample_params(r.sampling, &r.seq->rng_state));
    const std::vector<int32_t> ids = penalized_tokens(r.sampling, r.seq->history, static_cast<int32_t>(spec_.vocab));
    penalty_ids.insert(penalty_ids.end(), ids.begin(), ids.end());
    penalty_start.push_back(static_cast<int32_t>(penalty_ids.size()));
  }
  plan->penalty_start = push(plan->ints, penalty_start);
  plan->penalty_ids = push(plan->ints, penalty_ids);
  plan->sample_params = push_structs(plan->ints, params);
  plan->batch = std::move(batch);

  // The job holds the model (weights, pool) and the plan (and through it every sequence).
  device_->queue.push([self = shared_from_this(), plan, done = std::move(done), cancelled = std::move(cancelled)]() mutable {
    StepResult result;
    Status st = cancelled && cancelled()
                    ? Status(StatusCode::disposed, "step: cancelled before it ran")
                    : run_forward(*self->device_->backend, self->device_, self->spec_, self->w_, *self->pool_, *plan, &result);
    // Drop the sequences before reporting: pages of sequences released meanwhile go back to the
    // pool now, so whoever hears of this step's end sees them free.
    plan.reset();
    done(st, std::move(result));
  });
  return Status::Ok();
}

Status Model::attach(Sequence& seq, const std::vector<BlockPlacement>& blocks) {
  auto moves = std::make_shared<std::vector<RerotateRun>>();
  std::vector<int32_t> positions;
  KVF_RETURN_IF_ERROR(seq.attach(blocks, moves.get(), &positions));
  queue_rerotation(std::move(moves), std::move(positions));
  return Status::Ok();
}

Status Model::move_blocks(Sequence& seq, int64_t from_layer, const std::vector<std::pair<int32_t, int32_t>>& new_starts) {
  auto moves = std::make_shared<std::vector<RerotateRun>>();
  std::vector<int32_t> positions;
  KVF_RETURN_IF_ERROR(seq.move_blocks(from_layer, new_starts, moves.get(), &positions));
  queue_rerotation(std::move(moves), std::move(positions));
  return Status::Ok();
}

Status Model::compact(Sequence& seq, const std::vector<LayerCompaction>& layers, std::vector<std::vector<int32_t>>* new_slots) {
  auto moves = std::make_shared<std::vector<RerotateRun>>();
  auto value_moves = std::make_shared<std::vector<RerotateRun>>();
  std::vector<int32_t> positions;
  new_slots->clear();
  for (const LayerCompaction& c : layers) {
    new_slots->emplace_back();
    Status st = seq.compact(c.layer, c.keep, c.positions, &new_slots->back(), moves.get(), value_moves.get(), &positions);
    if (!st.ok()) {
      queue_rerotation(std::move(moves), std::move(positions), std::move(value_moves));  // the layers done so far
      return st;
    }
  }
  queue_rerotation(std::move(moves), std::move(positions), std::move(value_moves));
  return Status::Ok();
}

Status Model::gather_heads(Sequence& seq, const std::vector<LayerGather>& layers) {
  auto stage_k = std::make_shared<std::vector<RerotateRun>>();
  auto stage_v = std::make_shared<std::vector<RerotateRun>>();
  auto place = std::make_shared<std::vector<RerotateRun>>();
  std::vector<int32_t> positions, released;
  Status status;
  for (const LayerGather& g : layers) {
    Sequence::HeadGather one;
    status = seq.gather_heads(g.layer, g.sources, g.positions, &one);
    if (!status.ok()) break;  // the layers done so far are queued below
    // Offsets of this layer's runs into the shared position list.
    const int32_t base = static_cast<int32_t>(positions.size());
    for (auto* runs : {&one.stage_k, &one.stage_v, &one.place}) {
      for (RerotateRun& r : *runs) {
        r.from += base;
        r.to += base;
      }
    }
    positions.insert(positions.end(), one.positions.begin(), one.positions.end());
    stage_k->insert(stage_k->end(), one.stage_k.begin(), one.stage_k.end());
    stage_v->insert(stage_v->end(), one.stage_v.begin(), one.stage_v.end());
    place->insert(place->end(), one.place.begin(), one.place.end());
    released.insert(released.end(), one.released.begin(), one.released.end());
  }
  // Stage, then place, in one job (a placement reads what its stage wrote).
  queue_moves({{stage_k, stage_v}, {place, place}}, std::move(positions));
  // Released only now that every layer's moves are queued: handed out again to later jobs only.
  for (int32_t p : released) pool_->release(p);
  return status;
}

// Re-rotates moved keys (and copies moved values) on the device queue: after the steps that
// wrote the pages they read, before any later step of the sequence. One launch for every moved
// key of every layer (one more for values); the positions and the runs go up in one upload.
void Model::queue_rerotation(std::shared_ptr<std::vector<RerotateRun>> moves, std::vector<int32_t> positions,
                             std::shared_ptr<std::vector<RerotateRun>> value_moves) {
  if (!value_moves) value_moves = std::make_shared<std::vector<RerotateRun>>();
  queue_moves({{std::move(moves), std::move(value_moves)}}, std::move(positions));
}

// Phases of moves in one job: each phase's key launch, then its value launch, in order (a
// later phase may read what an earlier one wrote); one upload for every phase's runs.
void Model::queue_moves(std::vector<MovePhase> phases, std::vector<int32_t> positions) {
  bool any = false;
  for (const MovePhase& p : phases) any |= !p.keys->empty() || !p.values->empty();
  if (!any) return;
  auto ints = std::make_shared<std::vector<int32_t>>(std::move(positions));
  std::vector<std::pair<size_t, size_t>> at;  // per phase: offsets of its key and value runs
  for (const MovePhase& p : phases) {
    const size_t k = push_structs(*ints, *p.keys);
    at.emplace_back(k, push_structs(*ints, *p.values));
  }
  device_->queue.push([self = shared_from_this(), phases = std::move(phases), ints, at = std::move(at)]() {
    Backend& be = *self->device_->backend;
    const KvPool& pool = *self->pool_;
    const KvPoolSpec& ps = pool.spec();
    Status st;
    BufferRef upload = Buffer::create(self->device_, ints->size() * sizeof(int32_t), &st);
    if (upload) st = be.copy_from_host_async(upload->data(), ints->data(), ints->size() * sizeof(int32_t));
    const int32_t* base = upload ? static_cast<const int32_t*>(upload->data()) : nullptr;
    for (size_t i = 0; i < phases.size() && st.ok(); ++i) {
      RerotatePagesArgs a;
      a.dtype = ps.dtype;
      a.num_pages = ps.num_pages;
      a.page_size = ps.page_size;
      a.kv_heads = ps.kv_heads;
      a.head_dim = ps.head_dim;
      a.positions = base;
      a.inv_freq = static_cast<const float*>(self->w_.inv_freq->data());
      a.layout = self->spec_.rope_layout;
      // Keys re-rotate; values move by copying: the same launch with equal positions (a move by 0
      // is bit exact).
      for (const bool keys : {true, false}) {
        const std::vector<RerotateRun>& runs = keys ? *phases[i].keys : *phases[i].values;
        if (runs.empty() || !st.ok()) continue;
        void* data = keys ? pool.k()->data() : pool.v()->data();
        a.src_pool = data;
        a.dst_pool = data;
        a.runs = reinterpret_cast<const RerotateRun*>(base + (keys ? at[i].first : at[i].second));
        a.num_runs = static_cast<int64_t>(runs.size());
        st = be.rerotate_pages(a);
      }
    }
    if (st.ok()) st = be.synchronize();  // the upload's host copy is freed when this job ends
    // A failure here has no caller to reach: the sequence's next step runs on the device that
    // failed and reports the device's error.
  });
}

}  // namespace kvf
