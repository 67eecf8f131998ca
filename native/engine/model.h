// A decoder-only transformer of the Llama family (Llama 2/3, Mistral, Qwen2) on one device,
// and its forward step over a batch of sequences sharing the paged KV pool.
#pragma once

#include <memory>
#include <vector>

#include "kv_cache.h"
#include "sampler.h"

namespace kvf {

// Validated in lib/ (config.json) before it reaches here.
struct ModelSpec {
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float rms_eps = 1e-6f;
  RopeLayout rope_layout = RopeLayout::half;
  float rope_attn_factor = 1.0f;  // YaRN's mscale, 1 otherwise
  DType act_dtype = DType::f32;   // activations between ops
  // Sliding-window attention (Mistral v0.1, Qwen2 use_sliding_window): a query at slot i of a
  // sliding layer sees slots j > i - sliding_window. 0: no layer slides.
  int64_t sliding_window = 0;
  std::vector<bool> sliding_layers;  // (layers) when sliding_window > 0
};

struct Weight {
  BufferRef buf;  // null when absent (an optional bias)
  DType dtype = DType::f32;
  explicit operator bool() const { return static_cast<bool>(buf); }
};

struct LayerWeights {
  Weight attn_norm;             // (hidden)
  Weight wq, wk, wv, wo;        // (heads*head_dim, hidden), (kv_heads*head_dim, hidden) x2, (hidden, heads*head_dim)
  Weight bq, bk, bv;            // optional biases (Qwen2, Llama attention_bias): (heads*head_dim), (kv_heads*head_dim) x2
  Weight bo;                    // optional (hidden) (Llama attention_bias)
  Weight ffn_norm;              // (hidden)
  Weight gate, up, down;        // (intermediate, hidden) x2, (hidden, intermediate)
  Weight b_gate, b_up, b_down;  // optional (intermediate) x2, (hidden) (Llama mlp_bias)
};

struct ModelWeights {
  Weight embed;                 // (vocab, hidden)
  std::vector<LayerWeights> layers;
  Weight final_norm;            // (hidden)
  Weight lm_head;               // (vocab, hidden); the embedding when tied
  BufferRef inv_freq;           // (head_dim / 2) f32, rope scaling folded in
};

// One sequence's part of a forward step.
struct StepRequest {
  std::shared_ptr<Sequence> seq;
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;  // one per token
  // RoPE inverse frequencies (head_dim / 2) for this request's tokens; empty: the model's.
  // Dynamic NTK scaling recomputes them from the sequence length of each forward step.
  std::vector<float> inv_freq;
  enum class Logits { none, last, all } logits = Logits::last;
  bool sample = false;
  SamplingParams sampling;
  // Scores (CacheFocus document relevance): with num_ranges > 0, every layer's attention also
  // reports the probability mass each of this request's query rows and heads puts on each of
  // num_ranges slot ranges, from the softmax of the attention itself. mass_ranges holds
  // (layers, num_ranges) [begin, end) pairs, each layer's in that layer's slot order (after this
  // step's tokens are appended). Returned in StepResult::range_mass; a step that asks for none
  // runs as before.
  std::vector<int32_t> mass_ranges;
  int64_t num_ranges = 0;
  // Layers [layer_begin, layer_end) only (-1: to the last), for a policy that decides between
  // layers (CacheFocus pruning): such a step holds this one request. It appends its tokens to
  // those layers only; one that starts past layer 0 reads the hidden state the previous one
  // left in the sequence (Sequence::carry), one that ends early leaves it there and returns no
  // logits.
  int64_t layer_begin = 0, layer_end = -1;
  // Column sums (H2O-style scores): every layer's attention also reports, per KV head and cached
  // slot, the probability summed over this request's rows and the query heads of the group.
  // Returned in StepResult::column_sums as (layers, kv_heads, slots of that layer) f32, packed.
  bool column_sums = false;
  // With column_sums: per query head instead of per KV head, (layers, heads, slots); and, with
  // score_decay = beta in (0, 1), weighted by row age as EMA scores (paged_attention.h,
  // col_log_decay; the Cascading KV cache's). 0 or 1: plain sums.
  bool column_sums_per_head = false;
  float score_decay = 0.0f;
  // With column_sums: only the request's last score_rows rows count (0: all; SnapKV's window).
  int64_t score_rows = 0;
  // Two-part attention (APE, kernels/paged_attention.h): with ctx_ranges (layers x 2) not empty,
  // every layer's attention treats this request's slots [begin, end) of that layer as the
  // context (logits / ctx_temperature, log-sum-exp x ctx_scale x ctx_temperature in the merge).
  // Not combined with the scores (mass_ranges, column_sums).
  std::vector<int32_t> ctx_ranges;
  float ctx_temperature = 1.0f, ctx_scale = 1.0f;
};

struct StepResult {
  std::vector<std::vector<float>> logits;  // per request: rows x vocab (empty for none)
  std::vector<int32_t> sampled;            // per request: the sampled token, or -1
  // Per request: (layers, rows, heads, num_ranges) f32 range masses; empty when not asked for.
  std::vector<std::vector<float>> range_mass;
  // Per request: every layer's (kv_heads or heads, slots) column sums, layer after layer; empty when not asked for.
  std::vector<std::vector<float>> column_sums;
};

class Model : public std::enable_shared_from_this<Model> {
 public:
  Model(Device* device, ModelSpec spec, ModelWeights weights, std::shared_ptr<KvPool> pool)
      : device_(device), spec_(spec), w_(std::move(weights)), pool_(std::move(pool)) {}

  Device* device() const { return device_; }
  const ModelSpec& spec() const { return spec_; }
  const std::shared_ptr<KvPool>& pool() const { return pool_; }

  // JS thread: reserve KV slots for each request (typed out-of-memory when the pool is full;
  // then no sequence is changed) and build the job that runs the step on the device queue.
  // The job's result is delivered to `done` on the queue thread. The job holds the model.
  // When `cancelled` says so as the job starts, the forward pass is skipped (done still runs).
  // JS thread: attaches stored blocks to an empty sequence (Sequence::attach) and queues the
  // re-rotation of the keys of moved blocks into the sequence's own key pages.
  Status attach(Sequence& seq, const std::vector<BlockPlacement>& blocks);

  // JS thread: Sequence::move_blocks, and the re-rotation it needs queued before the sequence's
  // next step.
  Status move_blocks(Sequence& seq, int64_t from_layer, const std::vector<std::pair<int32_t, int32_t>>& new_starts);

  // JS thread: Sequence::compact for each (layer, kept slots, new positions), and the moves it
  // needs queued as one launch for the keys and one for the values.
  struct LayerCompaction {
    int64_t layer = 0;
    std::vector<int32_t> keep, positions;
  };
  Status compact(Sequence& seq, const std::vector<LayerCompaction>& layers, std::vector<std::vector<int32_t>>* new_slots);

  // JS thread: Sequence::gather_heads for each (layer, per-head sources, new positions), with
  // the staged moves queued (all layers' stages in one launch pair, then their placements).
  struct LayerGather {
    int64_t layer = 0;
    std::vector<int32_t> sources, positions;
  };
  Status gather_heads(Sequence& seq, const std::vector<LayerGather>& layers);

  Status enqueue_step(std::vector<StepRequest> batch, std::function<void(Status, StepResult)> done,
                      std::function<bool()> cancelled = {});

 private:
  struct MovePhase {
    std::shared_ptr<std::vector<RerotateRun>> keys, values;
  };
  void queue_moves(std::vector<MovePhase> phases, std::vector<int32_t> positions);
  void queue_rerotation(std::shared_ptr<std::vector<RerotateRun>> moves, std::vector<int32_t> positions,
                        std::shared_ptr<std::vector<RerotateRun>> value_moves = nullptr);
  Device* device_;
  ModelSpec spec_;
  ModelWeights w_;
  std::shared_ptr<KvPool> pool_;
};

}  // namespace kvf
