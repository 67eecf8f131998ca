// NativeModel and NativeSequence: the engine's handles. createModel takes validated weights
// (NativeTensors) and a spec from lib/model.ts; step() queues one forward step for a batch of
// sequences and resolves with their logits and sampled tokens.
#include "model.h"

#include <climits>
#include <cmath>
#include <cstring>

#include "async.h"
#include "instance.h"
#include "errors.h"
#include "tensor.h"
#include "../engine/kv_transfer.h"

namespace kvf::napi {
namespace {

const napi_type_tag kModelTag = {0x6b76666f63757354ULL, 0x6d6f64656c000002ULL};
const napi_type_tag kSequenceTag = {0x6b76666f63757354ULL, 0x7365710000000003ULL};
const napi_type_tag kBlockTag = {0x6b76666f63757354ULL, 0x626c6f636b000004ULL};

int64_t get_int(Napi::Env env, Napi::Object o, const char* key, const char* what) {
  Napi::Value v = o.Get(key);
  const double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(x >= 0 && x <= 9007199254740991.0) || static_cast<double>(static_cast<int64_t>(x)) != x)
    throw_invalid(env, std::string(what) + "." + key + " must be a non-negative integer");
  return static_cast<int64_t>(x);
}

float get_float(Napi::Env env, Napi::Object o, const char* key, float fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw_invalid(env, std::string("sampling.") + key + " must be a number");
  return v.As<Napi::Number>().FloatValue();
}

Weight weight(Napi::Env env, Napi::Object o, const char* key, Device* dev, int64_t numel, bool optional = false) {
  Napi::Value v = o.Get(key);
  if (optional && (v.IsUndefined() || v.IsNull())) return {};
  const std::string what = std::string("createModel: weight ") + key;
  NativeTensor* t = NativeTensor::unwrap(v, what.c_str());
  if (t->device() != dev) throw_invalid(env, what + " is on " + t->device()->name() + ", expected " + dev->name());
  if (!is_float(t->dtype())) throw_invalid(env, what + " must be f32, f16 or bf16");
  if (numel >= 0 && t->numel() != numel)
    throw_invalid(env, what + " has " + std::to_string(t->numel()) + " elements, expected " + std::to_string(numel));
  return Weight{t->buffer(), t->dtype()};
}

std::vector<int32_t> int_array(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_invalid(env, std::string(what) + " must be an Int32Array");
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

// A step request's rangeMass: one Int32Array of [begin, end) pairs for every layer, or an array
// of one per layer, all of one length; stored per layer in sr->mass_ranges.
void mass_ranges(Napi::Env env, Napi::Value v, int64_t layers, StepRequest* sr) {
  std::vector<std::vector<int32_t>> lists;
  if (v.IsArray()) {
    Napi::Array arr = v.As<Napi::Array>();
    if (static_cast<int64_t>(arr.Length()) != layers)
      throw_invalid(env, "step: rangeMass needs one Int32Array per layer (" + std::to_string(layers) + "), got " + std::to_string(arr.Length()));
    for (uint32_t l = 0; l < arr.Length(); ++l) lists.push_back(int_array(env, arr.Get(l), "step: rangeMass[layer]"));
  } else {
    lists.assign(static_cast<size_t>(layers), int_array(env, v, "step: rangeMass"));
  }
  const size_t n = lists.front().size();
  if (n == 0 || n % 2 != 0) throw_invalid(env, "step: rangeMass must hold one or more [begin, end) pairs");
  for (const auto& list : lists) {
    if (list.size() != n) throw_invalid(env, "step: rangeMass needs the same number of ranges in every layer");
    for (size_t i = 0; i < n; i += 2)
      if (list[i] < 0 || list[i + 1] < list[i])
        throw_invalid(env, "step: rangeMass [" + std::to_string(list[i]) + ", " + std::to_string(list[i + 1]) + ") is not a range of slots");
    sr->mass_ranges.insert(sr->mass_ranges.end(), list.begin(), list.end());
  }
  sr->num_ranges = static_cast<int64_t>(n / 2);
}

}  // namespace

// ---- NativeSequence ----

Napi::Function NativeSequence::define(Napi::Env env) {
  return DefineClass(env, "NativeSequence",
                     {
                         InstanceAccessor<&NativeSequence::length>("length"),
                         InstanceMethod<&NativeSequence::layer_lengths>("layerLengths"),
                         InstanceMethod<&NativeSequence::positions>("positions"),
                         InstanceMethod<&NativeSequence::reseed>("reseed"),
                         InstanceMethod<&NativeSequence::truncate>("truncate"),
                         InstanceMethod<&NativeSequence::clear>("clear"),
                         InstanceMethod<&NativeSequence::release>("release"),
                         InstanceMethod<&NativeSequence::export_block>("exportBlock"),
                         InstanceMethod<&NativeSequence::spans>("spans"),
                         InstanceMethod<&NativeSequence::drop_blocks>("dropBlocks"),
                         InstanceMethod<&NativeSequence::set_layer_shift>("setLayerShift"),
                     });
}

NativeSequence::NativeSequence(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeSequence>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) throw_invalid(info.Env(), "NativeSequence cannot be constructed directly");
  seq_ = *info[0].As<Napi::External<std::shared_ptr<Sequence>>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kSequenceTag);
}

NativeSequence* NativeSequence::unwrap(Napi::Value v, const char* what) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kSequenceTag))
    throw_invalid(env, std::string(what) + ": expected a sequence (Illegal invocation)");
  NativeSequence* s = NativeSequence::Unwrap(v.As<Napi::Object>());
  if (s == nullptr || !s->seq_) throw_status(env, Status(StatusCode::disposed, std::string(what) + ": the sequence has been disposed"));
  return s;
}

// exportBlock(fromToken) -> NativeKvBlock: the pages of tokens [fromToken, length), which must
// start a page; they stay shared with the sequence until it releases them.
Napi::Value NativeSequence::export_block(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "exportBlock");
  if (!info[0].IsNumber()) throw_invalid(info.Env(), "exportBlock: fromToken must be a number");
  std::shared_ptr<KvBlock> block;
  Status st = seq_->export_block(info[0].As<Napi::Number>().Int64Value(), &block);
  if (!st.ok()) throw_status(info.Env(), st);
  return NativeKvBlock::wrap(info.Env(), std::move(block));
}

namespace {
int64_t layer_arg(const Napi::CallbackInfo& info, size_t i, int64_t layers, const char* what, bool allow_end) {
  const double l = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : -1;
  const double limit = static_cast<double>(allow_end ? layers : layers - 1);
  if (!(l >= 0 && l <= limit) || static_cast<double>(static_cast<int64_t>(l)) != l)
    throw_invalid(info.Env(), std::string(what) + ": layer must be an integer in [0, " + std::to_string(static_cast<int64_t>(limit)) + "]");
  return static_cast<int64_t>(l);
}
}  // namespace

// spans(layer) -> Int32Array of [block, firstSlot, tokens, firstPosition] per attached block the
// layer holds, in slot order (a block's tokens are slots firstSlot .. firstSlot + tokens - 1).
Napi::Value NativeSequence::spans(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "spans");
  const int64_t l = layer_arg(info, 0, static_cast<int64_t>(seq_->layers().size()), "spans", false);
  const LayerKv& lk = seq_->layers()[static_cast<size_t>(l)];
  const int64_t ps = seq_->pool()->spec().page_size;
  Napi::Int32Array out = Napi::Int32Array::New(info.Env(), lk.spans.size() * 4);
  for (size_t i = 0; i < lk.spans.size(); ++i) {
    const Span& sp = lk.spans[i];
    out[i * 4] = sp.block;
    out[i * 4 + 1] = static_cast<int32_t>(sp.first_page * ps);
    out[i * 4 + 2] = static_cast<int32_t>(sp.tokens);
    out[i * 4 + 3] = lk.positions[static_cast<size_t>(sp.first_page * ps)];
  }
  return out;
}

// dropBlocks(fromLayer, blocks: Int32Array): layers fromLayer.. stop holding those blocks.
Napi::Value NativeSequence::drop_blocks(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "dropBlocks");
  const int64_t l = layer_arg(info, 0, static_cast<int64_t>(seq_->layers().size()), "dropBlocks", true);
  Status st = seq_->drop_blocks(l, int_array(info.Env(), info[1], "dropBlocks: blocks"));
  if (!st.ok()) throw_status(info.Env(), st);
  return info.Env().Undefined();
}

// setLayerShift(fromLayer, shift): tokens appended to layers fromLayer.. go `shift` further.
Napi::Value NativeSequence::set_layer_shift(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "setLayerShift");
  const int64_t l = layer_arg(info, 0, static_cast<int64_t>(seq_->layers().size()), "setLayerShift", true);
  if (!info[1].IsNumber()) throw_invalid(info.Env(), "setLayerShift: shift must be a number");
  const double shift = info[1].As<Napi::Number>().DoubleValue();
  if (!(std::abs(shift) <= INT32_MAX) || shift != static_cast<double>(static_cast<int64_t>(shift))) throw_invalid(info.Env(), "setLayerShift: shift must be an integer");
  seq_->set_shift(l, static_cast<int32_t>(shift));
  return info.Env().Undefined();
}

Napi::Value NativeSequence::length(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "length");
  return Napi::Number::New(info.Env(), seq_->layers().empty() ? 0.0 : static_cast<double>(seq_->layers()[0].length()));
}

Napi::Value NativeSequence::layer_lengths(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "layerLengths");
  Napi::Array out = Napi::Array::New(info.Env(), seq_->layers().size());
  for (size_t i = 0; i < seq_->layers().size(); ++i) out.Set(static_cast<uint32_t>(i), static_cast<double>(seq_->layers()[i].length()));
  return out;
}

// positions(layer) -> Int32Array: the RoPE position of every slot the layer holds, in slot order.
Napi::Value NativeSequence::positions(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "positions");
  const double l = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(l >= 0 && l < static_cast<double>(seq_->layers().size())) || static_cast<double>(static_cast<int64_t>(l)) != l)
    throw_invalid(info.Env(), "positions: layer must be an integer in [0, layers)");
  // Tokens only: holes (the padded tails of attached blocks' pages) are no tokens.
  std::vector<int32_t> p;
  for (int32_t x : seq_->layers()[static_cast<size_t>(l)].positions)
    if (x != kHole) p.push_back(x);
  Napi::Int32Array out = Napi::Int32Array::New(info.Env(), p.size());
  if (!p.empty()) std::memcpy(out.Data(), p.data(), p.size() * sizeof(int32_t));
  return out;
}

// reseed(seed): restarts the sampler's random stream, as newSequence(seed) seeds it.
Napi::Value NativeSequence::reseed(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "reseed");
  if (!info[0].IsNumber()) throw_invalid(info.Env(), "reseed: seed must be a number");
  seq_->rng_state = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()) ^ 0x853c49e6748fea9bULL;
  return info.Env().Undefined();
}

Napi::Value NativeSequence::truncate(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "truncate");
  if (!info[0].IsNumber()) throw_invalid(info.Env(), "truncate: n must be a number");
  const int64_t n = info[0].As<Napi::Number>().Int64Value();
  if (n < 0) throw_invalid(info.Env(), "truncate: n must be non-negative");
  seq_->truncate(n);
  const size_t keep = seq_->history.size() > static_cast<size_t>(n) ? seq_->history.size() - n : 0;
  seq_->history.resize(keep);
  return info.Env().Undefined();
}

Napi::Value NativeSequence::clear(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "clear");
  seq_->clear();
  return info.Env().Undefined();
}

Napi::Value NativeSequence::release(const Napi::CallbackInfo& info) {
  seq_.reset();  // pages go back to the pool once queued steps holding the sequence are done
  return info.Env().Undefined();
}

// ---- NativeKvBlock ----

Napi::Function NativeKvBlock::define(Napi::Env env) {
  return DefineClass(env, "NativeKvBlock",
                     {
                         InstanceAccessor<&NativeKvBlock::tokens>("tokens"),
                         InstanceAccessor<&NativeKvBlock::pages>("pages"),
                         InstanceMethod<&NativeKvBlock::share>("share"),
                         InstanceMethod<&NativeKvBlock::release>("release"),
                         InstanceMethod<&NativeKvBlock::read>("read"),
                         InstanceMethod<&NativeKvBlock::positions>("positions"),
                     });
}

NativeKvBlock::NativeKvBlock(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeKvBlock>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) throw_invalid(info.Env(), "NativeKvBlock cannot be constructed directly");
  block_ = *info[0].As<Napi::External<std::shared_ptr<KvBlock>>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kBlockTag);
}

Napi::Value NativeKvBlock::wrap(Napi::Env env, std::shared_ptr<KvBlock> block) {
  return Instance::get(env)->block_ctor.New({Napi::External<std::shared_ptr<KvBlock>>::New(env, &block)});
}

NativeKvBlock* NativeKvBlock::unwrap(Napi::Value v, const char* what) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kBlockTag))
    throw_invalid(env, std::string(what) + ": expected a KV block (Illegal invocation)");
  NativeKvBlock* b = NativeKvBlock::Unwrap(v.As<Napi::Object>());
  if (b == nullptr || !b->block_) throw_status(env, Status(StatusCode::disposed, std::string(what) + ": the KV block has been released"));
  return b;
}

Napi::Value NativeKvBlock::tokens(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "tokens");
  return Napi::Number::New(info.Env(), static_cast<double>(block_->tokens()));
}

// Pages of every layer together.
Napi::Value NativeKvBlock::pages(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "pages");
  size_t n = 0;
  for (const auto& l : block_->pages) n += l.size();
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

// share() -> another handle on the same pages: each handle keeps them until its release().
Napi::Value NativeKvBlock::share(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "share");
  return wrap(info.Env(), block_);
}

Napi::Value NativeKvBlock::release(const Napi::CallbackInfo& info) {
  block_.reset();  // pages go back once no sequence or queued job holds them
  return info.Env().Undefined();
}

// read() -> Promise<ArrayBuffer>: the block's keys then its values, each (layers, tokens,
// kv_heads, head_dim) in the pool's dtype, after every step queued before it.
Napi::Value NativeKvBlock::read(const Napi::CallbackInfo& info) {
  return guarded(info, [&](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env env = info.Env();
    std::shared_ptr<KvBlock> block = unwrap(info.This(), "read")->block_;
    const size_t half = block_array_bytes(block->pool->spec(), block->tokens());
    Napi::ArrayBuffer out = Napi::ArrayBuffer::New(env, 2 * half);
    auto completion = std::make_shared<Completion>(env);
    completion->keep(out);
    char* dst = static_cast<char*>(out.Data());
    block->pool->device()->queue.push([completion, block, dst, half] {
      Status st;
      {
        EnvWriteGuard guard(*completion);  // dst belongs to the environment
        if (!guard) return;
        st = read_block(*block, dst, dst + half);
      }
      completion->finish(st, [](Napi::Env, const KeptValues& kept) -> Napi::Value { return kept.at(0); });
    });
    return completion->promise();
  });
}

// positions(layer) -> Int32Array: the RoPE position of each of the block's tokens at `layer`.
Napi::Value NativeKvBlock::positions(const Napi::CallbackInfo& info) {
  unwrap(info.This(), "positions");
  const double l = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(l >= 0 && l < static_cast<double>(block_->positions.size())) || static_cast<double>(static_cast<int64_t>(l)) != l)
    throw_invalid(info.Env(), "positions: layer must be an integer in [0, layers)");
  const auto& p = block_->positions[static_cast<size_t>(l)];
  Napi::Int32Array out = Napi::Int32Array::New(info.Env(), p.size());
  if (!p.empty()) std::memcpy(out.Data(), p.data(), p.size() * sizeof(int32_t));
  return out;
}

// ---- NativeModel ----

Napi::Function NativeModel::define(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {
                         InstanceMethod<&NativeModel::new_sequence>("newSequence"),
                         InstanceMethod<&NativeModel::step>("step"),
                         InstanceMethod<&NativeModel::free_pages>("freePages"),
                         InstanceMethod<&NativeModel::attach>("attach"),
                         InstanceMethod<&NativeModel::import_block>("importBlock"),
                         InstanceMethod<&NativeModel::move_blocks>("moveBlocks"),
                         InstanceMethod<&NativeModel::compact>("compact"),
                         InstanceMethod<&NativeModel::gather_heads>("gatherHeads"),
                         InstanceMethod<&NativeModel::release>("release"),
                     });
}

NativeModel::NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) throw_invalid(info.Env(), "NativeModel cannot be constructed directly; use loadModel()");
  model_ = *info[0].As<Napi::External<std::shared_ptr<Model>>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kModelTag);
}

Model& NativeModel::get(const Napi::CallbackInfo& info, const char* what) {
  Napi::Value self = info.This();
  if (!self.IsObject() || !self.As<Napi::Object>().CheckTypeTag(&kModelTag))
    throw_invalid(info.Env(), std::string(what) + ": Illegal invocation");
  if (!model_) throw_status(info.Env(), Status(StatusCode::disposed, std::string(what) + ": the model has been disposed"));
  return *model_;
}

// createModel(spec, weights, kv) -> NativeModel
Napi::Value NativeModel::create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[1].IsObject() || !info[2].IsObject()) throw_invalid(env, "createModel: expected (spec, weights, kv)");
  Napi::Object so = info[0].As<Napi::Object>(), wo = info[1].As<Napi::Object>(), ko = info[2].As<Napi::Object>();
  ModelSpec s;
  s.vocab = get_int(env, so, "vocab", "spec");
  s.hidden = get_int(env, so, "hidden", "spec");
  s.intermediate = get_int(env, so, "intermediate", "spec");
  s.layers = get_int(env, so, "layers", "spec");
  s.heads = get_int(env, so, "heads", "spec");
  s.kv_heads = get_int(env, so, "kvHeads", "spec");
  s.head_dim = get_int(env, so, "headDim", "spec");
  s.rms_eps = get_float(env, so, "rmsEps", 1e-6f);
  s.rope_attn_factor = get_float(env, so, "ropeAttnFactor", 1.0f);
  const std::string layout = so.Get("ropeLayout").ToString().Utf8Value();
  s.rope_layout = layout == "adjacent" ? RopeLayout::adjacent : RopeLayout::half;
  if (s.kv_heads == 0 || s.heads % s.kv_heads != 0 || s.head_dim % 2 != 0 || s.layers == 0)
    throw_invalid(env, "createModel: inconsistent spec (heads, kvHeads, headDim, layers)");
  // slidingWindow (0: none) and slidingLayers (one boolean per layer).
  Napi::Value sw = so.Get("slidingWindow");
  if (!sw.IsUndefined() && !sw.IsNull()) s.sliding_window = get_int(env, so, "slidingWindow", "spec");
  if (s.sliding_window > 0) {
    if (!so.Get("slidingLayers").IsArray()) throw_invalid(env, "createModel: spec.slidingLayers must be an array");
    Napi::Array sl = so.Get("slidingLayers").As<Napi::Array>();
    if (sl.Length() != static_cast<uint32_t>(s.layers)) throw_invalid(env, "createModel: spec.slidingLayers needs one entry per layer");
    for (uint32_t i = 0; i < sl.Length(); ++i) s.sliding_layers.push_back(sl.Get(i).ToBoolean().Value());
  }

  NativeTensor* embed = NativeTensor::unwrap(wo.Get("embed"), "createModel: weight embed");
  Device* dev = embed->device();
  const int64_t D = s.hidden, F = s.intermediate, qd = s.heads * s.head_dim, kd = s.kv_heads * s.head_dim;
  ModelWeights w;
  w.embed = weight(env, wo, "embed", dev, s.vocab * D);
  w.final_norm = weight(env, wo, "finalNorm", dev, D);
  w.lm_head = weight(env, wo, "lmHead", dev, s.vocab * D);
  NativeTensor* inv = NativeTensor::unwrap(wo.Get("invFreq"), "createModel: invFreq");
  if (inv->dtype() != DType::f32 || inv->numel() != s.head_dim / 2 || inv->device() != dev)
    throw_invalid(env, "createModel: invFreq must be f32 [headDim / 2] on the model's device");
  w.inv_freq = inv->buffer();
  if (!wo.Get("layers").IsArray()) throw_invalid(env, "createModel: weights.layers must be an array");
  Napi::Array layers = wo.Get("layers").As<Napi::Array>();
  if (layers.Length() != static_cast<uint32_t>(s.layers)) throw_invalid(env, "createModel: weights.layers has the wrong length");
  for (uint32_t i = 0; i < layers.Length(); ++i) {
    Napi::Object lo = layers.Get(i).As<Napi::Object>();
    LayerWeights lw;
    lw.attn_norm = weight(env, lo, "attnNorm", dev, D);
    lw.wq = weight(env, lo, "wq", dev, qd * D);
    lw.wk = weight(env, lo, "wk", dev, kd * D);
    lw.wv = weight(env, lo, "wv", dev, kd * D);
    lw.wo = weight(env, lo, "wo", dev, D * qd);
    lw.bq = weight(env, lo, "bq", dev, qd, true);
    lw.bk = weight(env, lo, "bk", dev, kd, true);
    lw.bv = weight(env, lo, "bv", dev, kd, true);
    lw.bo = weight(env, lo, "bo", dev, D, true);
    lw.ffn_norm = weight(env, lo, "ffnNorm", dev, D);
    lw.gate = weight(env, lo, "gate", dev, F * D);
    lw.up = weight(env, lo, "up", dev, F * D);
    lw.down = weight(env, lo, "down", dev, D * F);
    lw.b_gate = weight(env, lo, "bGate", dev, F, true);
    lw.b_up = weight(env, lo, "bUp", dev, F, true);
    lw.b_down = weight(env, lo, "bDown", dev, D, true);
    w.layers.push_back(std::move(lw));
  }
  KvPoolSpec ks;
  ks.num_pages = get_int(env, ko, "numPages", "kv");
  ks.page_size = get_int(env, ko, "pageSize", "kv");
  ks.layers = s.layers;
  ks.kv_heads = s.kv_heads;
  ks.head_dim = s.head_dim;
  ks.dtype = parse_dtype(env, ko.Get("dtype"), "kv.dtype");
  if (ks.page_size == 0 || !is_float(ks.dtype)) throw_invalid(env, "createModel: kv.pageSize must be positive and kv.dtype a float type");
  Status st;
  std::shared_ptr<KvPool> pool = KvPool::create(dev, ks, &st);
  if (!pool) throw_status(env, st);
  auto model = std::make_shared<Model>(dev, s, std::move(w), std::move(pool));
  return Instance::get(env)->model_ctor.New({Napi::External<std::shared_ptr<Model>>::New(env, &model)});
}

Napi::Value NativeModel::new_sequence(const Napi::CallbackInfo& info) {
  Model& m = get(info, "newSequence");
  auto seq = std::make_shared<Sequence>(m.pool());
  if (info[0].IsNumber()) seq->rng_state = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()) ^ 0x853c49e6748fea9bULL;
  return Instance::get(info.Env())->sequence_ctor.New({Napi::External<std::shared_ptr<Sequence>>::New(info.Env(), &seq)});
}

Napi::Value NativeModel::free_pages(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(get(info, "freePages").pool()->free_pages()));
}

// attach(seq, [{ block, start }]): the blocks, in order, into the empty sequence, each block's
// first token at `start` (keys re-rotated where that moves them). All or nothing.
Napi::Value NativeModel::attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Model& m = get(info, "attach");
  std::shared_ptr<Sequence> seq = NativeSequence::unwrap(info[0], "attach: seq")->sequence();
  if (seq->pool() != m.pool()) throw_invalid(env, "attach: the sequence belongs to another model");
  if (!info[1].IsArray()) throw_invalid(env, "attach: expected an array of { block, start }");
  Napi::Array list = info[1].As<Napi::Array>();
  std::vector<BlockPlacement> blocks;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    if (!list.Get(i).IsObject()) throw_invalid(env, "attach: expected an array of { block, start }");
    Napi::Object o = list.Get(i).As<Napi::Object>();
    BlockPlacement b;
    b.block = NativeKvBlock::unwrap(o.Get("block"), "attach: block")->block();
    const int64_t start = get_int(env, o, "start", "attach");
    if (start > INT32_MAX) throw_invalid(env, "attach: start is beyond any position");
    b.start = static_cast<int32_t>(start);
    blocks.push_back(std::move(b));
  }
  Status st = m.attach(*seq, blocks);
  if (!st.ok()) throw_status(env, st);
  return env.Undefined();
}

// moveBlocks(seq, fromLayer, blocks: Int32Array, starts: Int32Array): layers fromLayer.. of the
// sequence hold block blocks[i]'s first token at starts[i], keys re-rotated (queued).
Napi::Value NativeModel::move_blocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Model& m = get(info, "moveBlocks");
  std::shared_ptr<Sequence> seq = NativeSequence::unwrap(info[0], "moveBlocks: seq")->sequence();
  if (seq->pool() != m.pool()) throw_invalid(env, "moveBlocks: the sequence belongs to another model");
  const double l = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
  if (!(l >= 0 && l <= static_cast<double>(m.spec().layers)) || l != static_cast<double>(static_cast<int64_t>(l)))
    throw_invalid(env, "moveBlocks: fromLayer must be a layer index");
  const std::vector<int32_t> blocks = int_array(env, info[2], "moveBlocks: blocks");
  const std::vector<int32_t> starts = int_array(env, info[3], "moveBlocks: starts");
  if (blocks.size() != starts.size()) throw_invalid(env, "moveBlocks: one start per block");
  std::vector<std::pair<int32_t, int32_t>> moves;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (starts[i] < 0) throw_invalid(env, "moveBlocks: positions are non-negative");
    moves.emplace_back(blocks[i], starts[i]);
  }
  Status st = m.move_blocks(*seq, static_cast<int64_t>(l), moves);
  if (!st.ok()) throw_status(env, st);
  return env.Undefined();
}

// compact(seq, [{ layer, keep: Int32Array, positions: Int32Array }]) -> Int32Array[]: each layer
// keeps only the slots listed, at the positions given (keys re-rotated, moved rows copied, one
// launch each, queued); returns each kept slot's slot afterwards, per entry.
Napi::Value NativeModel::compact(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Model& m = get(info, "compact");
  std::shared_ptr<Sequence> seq = NativeSequence::unwrap(info[0], "compact: seq")->sequence();
  if (seq->pool() != m.pool()) throw_invalid(env, "compact: the sequence belongs to another model");
  if (!info[1].IsArray()) throw_invalid(env, "compact: expected an array of { layer, keep, positions }");
  Napi::Array list = info[1].As<Napi::Array>();
  std::vector<Model::LayerCompaction> layers;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    if (!list.Get(i).IsObject()) throw_invalid(env, "compact: expected an array of { layer, keep, positions }");
    Napi::Object o = list.Get(i).As<Napi::Object>();
    Model::LayerCompaction c;
    c.layer = get_int(env, o, "layer", "compact");
    c.keep = int_array(env, o.Get("keep"), "compact: keep");
    c.positions = int_array(env, o.Get("positions"), "compact: positions");
    layers.push_back(std::move(c));
  }
  std::vector<std::vector<int32_t>> slots;
  Status st = m.compact(*seq, layers, &slots);
  if (!st.ok()) throw_status(env, st);
  Napi::Array out = Napi::Array::New(env, slots.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    Napi::Int32Array a = Napi::Int32Array::New(env, slots[i].size());
    if (!slots[i].empty()) std::memcpy(a.Data(), slots[i].data(), slots[i].size() * sizeof(int32_t));
    out.Set(static_cast<uint32_t>(i), a);
  }
  return out;
}

// gatherHeads(seq, [{ layer, sources: Int32Array(kvHeads * n), positions: Int32Array(n) }]): each
// layer then holds n slots; slot s of KV head h takes slot sources[h * n + s]'s content of that
// head, its key re-rotated to positions[s] (moves staged through scratch pages, queued).
Napi::Value NativeModel::gather_heads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Model& m = get(info, "gatherHeads");
  std::shared_ptr<Sequence> seq = NativeSequence::unwrap(info[0], "gatherHeads: seq")->sequence();
  if (seq->pool() != m.pool()) throw_invalid(env, "gatherHeads: the sequence belongs to another model");
  if (!info[1].IsArray()) throw_invalid(env, "gatherHeads: expected an array of { layer, sources, positions }");
  Napi::Array list = info[1].As<Napi::Array>();
  std::vector<Model::LayerGather> layers;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    if (!list.Get(i).IsObject()) throw_invalid(env, "gatherHeads: expected an array of { layer, sources, positions }");
    Napi::Object o = list.Get(i).As<Napi::Object>();
    Model::LayerGather g;
    g.layer = get_int(env, o, "layer", "gatherHeads");
    g.sources = int_array(env, o.Get("sources"), "gatherHeads: sources");
    g.positions = int_array(env, o.Get("positions"), "gatherHeads: positions");
    layers.push_back(std::move(g));
  }
  Status st = m.gather_heads(*seq, layers);
  if (!st.ok()) throw_status(env, st);
  return env.Undefined();
}

// importBlock(start, tokens, data: Uint8Array) -> Promise<NativeKvBlock>: a block on fresh pages
// (positions start.. at every layer) filled from `data` in the layout NativeKvBlock.read()
// returns. Pages are taken now (out_of_memory when too few); the promise resolves once filled.
Napi::Value NativeModel::import_block(const Napi::CallbackInfo& info) {
  return guarded(info, [&](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env env = info.Env();
    Model& m = get(info, "importBlock");
    if (!info[0].IsNumber() || !info[1].IsNumber()) throw_invalid(env, "importBlock: start and tokens must be numbers");
    const double start = info[0].As<Napi::Number>().DoubleValue();
    const double tokens = info[1].As<Napi::Number>().DoubleValue();
    if (!(start >= 0 && start <= INT32_MAX) || start != static_cast<double>(static_cast<int64_t>(start)))
      throw_invalid(env, "importBlock: start must be an integer position");
    if (!(tokens >= 1 && tokens <= INT32_MAX) || tokens != static_cast<double>(static_cast<int64_t>(tokens)))
      throw_invalid(env, "importBlock: tokens must be a positive integer");
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw_invalid(env, "importBlock: data must be a Uint8Array");
    Napi::Uint8Array data = info[2].As<Napi::Uint8Array>();
    const size_t half = block_array_bytes(m.pool()->spec(), static_cast<int64_t>(tokens));
    if (data.ByteLength() != 2 * half)
      throw_invalid(env, "importBlock: data holds " + std::to_string(data.ByteLength()) + " bytes, expected " + std::to_string(2 * half));
    std::shared_ptr<KvBlock> block;
    Status st = new_block(m.pool(), static_cast<int32_t>(start), static_cast<int64_t>(tokens), &block);
    if (!st.ok()) throw_status(env, st);
    auto completion = std::make_shared<Completion>(env);
    completion->keep(data);
    const char* src = reinterpret_cast<const char*>(data.Data());
    m.pool()->device()->queue.push([completion, block, src, half] {
      Status st;
      {
        EnvWriteGuard guard(*completion);  // src belongs to the environment
        if (!guard) return;
        st = write_block(*block, src, src + half);
      }
      completion->finish(st, [block](Napi::Env env, const KeptValues&) -> Napi::Value { return NativeKvBlock::wrap(env, block); });
    });
    return completion->promise();
  });
}

Napi::Value NativeModel::release(const Napi::CallbackInfo& info) {
  model_.reset();  // queued steps keep their own reference
  return info.Env().Undefined();
}

// step([{ seq, tokens: Int32Array, positions: Int32Array, logits: 'none'|'last'|'all', sample?: {...},
//         invFreq?: Float32Array, rangeMass?: Int32Array | Int32Array[], layers?: [begin, end] }])
//   -> Promise<{ logits: (Float32Array | null)[], tokens: Int32Array, rangeMass: (Float32Array | null)[] }>
// rangeMass: [begin, end) slot-range pairs for every layer, or one Int32Array per layer (all of
// one length); the result's rangeMass[i] is (layers, rows, heads, ranges) f32.
Napi::Value NativeModel::step(const Napi::CallbackInfo& info) {
  return guarded(info, [&](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env env = info.Env();
    Model& m = get(info, "step");
    if (!info[0].IsArray()) throw_invalid(env, "step: expected an array of requests");
    Napi::Array reqs = info[0].As<Napi::Array>();
    std::vector<StepRequest> batch;
    for (uint32_t i = 0; i < reqs.Length(); ++i) {
      Napi::Object r = reqs.Get(i).As<Napi::Object>();
      StepRequest sr;
      sr.seq = NativeSequence::unwrap(r.Get("seq"), "step: seq")->sequence();
      if (sr.seq->pool() != m.pool()) throw_invalid(env, "step: the sequence belongs to another model");
      for (const StepRequest& other : batch)
        if (other.seq == sr.seq) throw_invalid(env, "step: a sequence appears twice in one step");
      sr.tokens = int_array(env, r.Get("tokens"), "step: tokens");
      sr.positions = int_array(env, r.Get("positions"), "step: positions");
      if (sr.positions.size() != sr.tokens.size()) throw_invalid(env, "step: positions must have one entry per token");
      Napi::Value fv = r.Get("invFreq");
      if (!fv.IsUndefined() && !fv.IsNull()) {
        if (!fv.IsTypedArray() || fv.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
          throw_invalid(env, "step: invFreq must be a Float32Array");
        Napi::Float32Array f = fv.As<Napi::Float32Array>();
        if (static_cast<int64_t>(f.ElementLength()) != m.spec().head_dim / 2)
          throw_invalid(env, "step: invFreq must have headDim / 2 entries");
        sr.inv_freq.assign(f.Data(), f.Data() + f.ElementLength());
      }
      for (int32_t t : sr.tokens)
        if (t < 0 || t >= m.spec().vocab) throw_invalid(env, "step: token id " + std::to_string(t) + " is outside the vocabulary");
      Napi::Value rv = r.Get("rangeMass");
      if (!rv.IsUndefined() && !rv.IsNull()) mass_ranges(env, rv, m.spec().layers, &sr);
      sr.column_sums = r.Get("columnSums").IsBoolean() && r.Get("columnSums").As<Napi::Boolean>().Value();
      sr.column_sums_per_head = r.Get("columnSumsPerHead").IsBoolean() && r.Get("columnSumsPerHead").As<Napi::Boolean>().Value();
      if (r.Get("scoreDecay").IsNumber()) {
        const double beta = r.Get("scoreDecay").As<Napi::Number>().DoubleValue();
        if (!(beta > 0.0 && beta <= 1.0)) throw_invalid(env, "step: scoreDecay must be in (0, 1]");
        sr.score_decay = static_cast<float>(beta);
      }
      if (r.Get("scoreRows").IsNumber()) {
        const double rows = r.Get("scoreRows").As<Napi::Number>().DoubleValue();
        if (!(rows >= 1 && rows < 2147483648.0 && rows == std::floor(rows))) throw_invalid(env, "step: scoreRows must be a positive integer");
        sr.score_rows = static_cast<int64_t>(rows);
      }
      Napi::Value cv = r.Get("context");
      if (!cv.IsUndefined() && !cv.IsNull()) {
        // Two-part (APE) attention: { ranges: Int32Array (layers x [begin, end)), temperature, scale }.
        if (!cv.IsObject()) throw_invalid(env, "step: context must be { ranges, temperature, scale }");
        Napi::Object c = cv.As<Napi::Object>();
        sr.ctx_ranges = int_array(env, c.Get("ranges"), "step: context.ranges");
        if (static_cast<int64_t>(sr.ctx_ranges.size()) != 2 * m.spec().layers)
          throw_invalid(env, "step: context.ranges needs one [begin, end) pair per layer (" + std::to_string(m.spec().layers) + ")");
        for (size_t k = 0; k < sr.ctx_ranges.size(); k += 2)
          if (sr.ctx_ranges[k] < 0 || sr.ctx_ranges[k + 1] < sr.ctx_ranges[k]) throw_invalid(env, "step: context.ranges holds a pair that is not a range of slots");
        Napi::Value tv = c.Get("temperature"), scv = c.Get("scale");
        if (!tv.IsNumber() || !scv.IsNumber()) throw_invalid(env, "step: context.temperature and context.scale must be numbers");
        sr.ctx_temperature = tv.As<Napi::Number>().FloatValue();
        sr.ctx_scale = scv.As<Napi::Number>().FloatValue();
        if (!(sr.ctx_temperature > 0.0f) || !std::isfinite(sr.ctx_temperature) || !std::isfinite(sr.ctx_scale))
          throw_invalid(env, "step: context.temperature must be positive and finite, context.scale finite");
      }
      Napi::Value lv = r.Get("layers");
      if (!lv.IsUndefined() && !lv.IsNull()) {
        if (!lv.IsArray() || lv.As<Napi::Array>().Length() != 2 || !lv.As<Napi::Array>().Get(0u).IsNumber() || !lv.As<Napi::Array>().Get(1u).IsNumber())
          throw_invalid(env, "step: layers must be [begin, end]");
        sr.layer_begin = lv.As<Napi::Array>().Get(0u).As<Napi::Number>().Int64Value();
        sr.layer_end = lv.As<Napi::Array>().Get(1u).As<Napi::Number>().Int64Value();
        if (sr.layer_begin < 0 || sr.layer_end <= sr.layer_begin || sr.layer_end > m.spec().layers) throw_invalid(env, "step: layers out of range");
      }
      const std::string lg = r.Get("logits").IsString() ? r.Get("logits").As<Napi::String>().Utf8Value() : "last";
      sr.logits = lg == "all" ? StepRequest::Logits::all : lg == "none" ? StepRequest::Logits::none : StepRequest::Logits::last;
      Napi::Value sv = r.Get("sample");
      if (sv.IsObject()) {
        Napi::Object so = sv.As<Napi::Object>();
        sr.sample = true;
        sr.sampling.temperature = get_float(env, so, "temperature", 0.0f);
        sr.sampling.top_k = static_cast<int32_t>(get_float(env, so, "topK", 0.0f));
        sr.sampling.top_p = get_float(env, so, "topP", 1.0f);
        sr.sampling.min_p = get_float(env, so, "minP", 0.0f);
        sr.sampling.repetition_penalty = get_float(env, so, "repetitionPenalty", 1.0f);
        sr.sampling.penalty_window = static_cast<int32_t>(get_float(env, so, "penaltyWindow", 64.0f));
      }
      batch.push_back(std::move(sr));
    }
    // If the step is refused (KV cache full), the completion is dropped here without settling.
    auto completion = std::make_shared<Completion>(env);
    auto result = std::make_shared<StepResult>();
    auto done = [completion, result](Status s, StepResult r) {
      *result = std::move(r);
      completion->finish(s, [result](Napi::Env env, const KeptValues&) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        Napi::Array logits = Napi::Array::New(env, result->logits.size());
        for (size_t i = 0; i < result->logits.size(); ++i) {
          const auto& l = result->logits[i];
          if (l.empty()) {
            logits.Set(static_cast<uint32_t>(i), env.Null());
            continue;
          }
          Napi::Float32Array a = Napi::Float32Array::New(env, l.size());
          std::memcpy(a.Data(), l.data(), l.size() * sizeof(float));
          logits.Set(static_cast<uint32_t>(i), a);
        }
        Napi::Int32Array tokens = Napi::Int32Array::New(env, result->sampled.size());
        for (size_t i = 0; i < result->sampled.size(); ++i) tokens[i] = result->sampled[i];
        Napi::Array masses = Napi::Array::New(env, result->range_mass.size());
        for (size_t i = 0; i < result->range_mass.size(); ++i) {
          const auto& rm = result->range_mass[i];
          if (rm.empty()) {
            masses.Set(static_cast<uint32_t>(i), env.Null());
            continue;
          }
          Napi::Float32Array a = Napi::Float32Array::New(env, rm.size());
          std::memcpy(a.Data(), rm.data(), rm.size() * sizeof(float));
          masses.Set(static_cast<uint32_t>(i), a);
        }
        out.Set("logits", logits);
        out.Set("tokens", tokens);
        out.Set("rangeMass", masses);
        Napi::Array sums = Napi::Array::New(env, result->column_sums.size());
        for (size_t i = 0; i < result->column_sums.size(); ++i) {
          const auto& cs = result->column_sums[i];
          if (cs.empty()) {
            sums.Set(static_cast<uint32_t>(i), env.Null());
            continue;
          }
          Napi::Float32Array a = Napi::Float32Array::New(env, cs.size());
          std::memcpy(a.Data(), cs.data(), cs.size() * sizeof(float));
          sums.Set(static_cast<uint32_t>(i), a);
        }
        out.Set("columnSums", sums);
        return out;
      });
    };
    // A step queued by an environment that has since ended is skipped: nobody reads its result.
    Status st = m.enqueue_step(std::move(batch), std::move(done), [completion] { return completion->cancelled(); });
    if (!st.ok()) throw_status(env, st);
    return completion->promise();
  });
}

}  // namespace kvf::napi
