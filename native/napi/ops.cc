// Op bindings: each takes input tensors, preallocated output tensors (shapes are computed and
// validated in lib/ops.ts) and a plain params object, checks that every buffer is exactly as
// large as the params say (so a bug above can never make a kernel read out of bounds), and
// enqueues the op on the device's queue. Results are read later through tensor.read().
#include "ops.h"

#include <algorithm>
#include <cstring>

#include "errors.h"
#include "tensor.h"

namespace kvf::napi {
namespace {

struct Params {
  Napi::Env env;
  Napi::Object obj;
  const char* op;

  int64_t i64(const char* key) const {
    Napi::Value v = obj.Get(key);
    const double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 0 && x <= 9007199254740991.0) || static_cast<double>(static_cast<int64_t>(x)) != x)
      throw_invalid(env, std::string(op) + ": param " + key + " must be a non-negative integer");
    return static_cast<int64_t>(x);
  }
  float f32(const char* key, float fallback) const {
    Napi::Value v = obj.Get(key);
    if (v.IsUndefined()) return fallback;
    if (!v.IsNumber()) throw_invalid(env, std::string(op) + ": param " + key + " must be a number");
    return v.As<Napi::Number>().FloatValue();
  }
  bool flag(const char* key) const { return obj.Get(key).ToBoolean().Value(); }
  RopeLayout layout() const {
    Napi::Value v = obj.Get("layout");
    const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
    if (s == "half") return RopeLayout::half;
    if (s == "adjacent") return RopeLayout::adjacent;
    throw_invalid(env, std::string(op) + ": param layout must be 'half' or 'adjacent'");
  }
};

Params params(const Napi::CallbackInfo& info, size_t index, const char* op) {
  if (!info[index].IsObject()) throw_invalid(info.Env(), std::string(op) + ": expected a params object");
  return Params{info.Env(), info[index].As<Napi::Object>(), op};
}

// An argument tensor with its expected element count and (optionally) dtype checked.
NativeTensor* arg(const Napi::CallbackInfo& info, size_t index, const char* op, const char* name, int64_t numel) {
  std::string what = std::string(op) + ": " + name;
  NativeTensor* t = NativeTensor::unwrap(info[index], what.c_str());
  if (t->numel() != numel)
    throw_invalid(info.Env(), what + " has " + std::to_string(t->numel()) + " elements, expected " + std::to_string(numel));
  return t;
}

void require_dtype(Napi::Env env, NativeTensor* t, DType want, const char* op, const char* name) {
  if (t->dtype() != want)
    throw_invalid(env, std::string(op) + ": " + name + " must be " + dtype_name(want) + ", got " + dtype_name(t->dtype()));
}

Device* same_device(Napi::Env env, const char* op, std::initializer_list<NativeTensor*> ts) {
  Device* d = (*ts.begin())->device();
  for (NativeTensor* t : ts) {
    if (t->device() != d)
      throw_invalid(env, std::string(op) + ": all tensors must be on one device (" + d->name() + " and " + t->device()->name() + ")");
  }
  return d;
}

Napi::Value matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 3, "matmul");
  MatmulArgs a;
  a.batch = p.i64("batch");
  a.m = p.i64("m");
  a.n = p.i64("n");
  a.k = p.i64("k");
  a.trans_b = p.flag("transB");
  a.broadcast_b = p.flag("broadcastB");
  NativeTensor* ta = arg(info, 0, "matmul", "a", a.batch * a.m * a.k);
  NativeTensor* tb = arg(info, 1, "matmul", "b", (a.broadcast_b ? 1 : a.batch) * a.k * a.n);
  NativeTensor* tc = arg(info, 2, "matmul", "out", a.batch * a.m * a.n);
  Device* d = same_device(env, "matmul", {ta, tb, tc});
  a.a = ta->buffer()->data();
  a.a_dtype = ta->dtype();
  a.b = tb->buffer()->data();
  a.b_dtype = tb->dtype();
  a.c = tc->buffer()->data();
  a.c_dtype = tc->dtype();
  enqueue_op(d, {ta->buffer(), tb->buffer()}, {tc->buffer()}, [a](Backend& be) { return be.matmul(a); });
  return env.Undefined();
}

Napi::Value rmsnorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 3, "rmsnorm");
  RmsNormArgs a;
  a.rows = p.i64("rows");
  a.dim = p.i64("dim");
  a.eps = p.f32("eps", 1e-6f);
  NativeTensor* tx = arg(info, 0, "rmsnorm", "x", a.rows * a.dim);
  NativeTensor* tw = arg(info, 1, "rmsnorm", "weight", a.dim);
  NativeTensor* ty = arg(info, 2, "rmsnorm", "out", a.rows * a.dim);
  require_dtype(env, ty, tx->dtype(), "rmsnorm", "out");
  Device* d = same_device(env, "rmsnorm", {tx, tw, ty});
  a.x = tx->buffer()->data();
  a.y = ty->buffer()->data();
  a.dtype = tx->dtype();
  a.weight = tw->buffer()->data();
  a.weight_dtype = tw->dtype();
  enqueue_op(d, {tx->buffer(), tw->buffer()}, {ty->buffer()}, [a](Backend& be) { return be.rmsnorm(a); });
  return env.Undefined();
}

// rope(x, positions, invFreq, out, params) and rerotate(x, from, to, invFreq, out, params).
Napi::Value rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 4, "rope");
  RopeArgs a;
  a.tokens = p.i64("tokens");
  a.heads = p.i64("heads");
  a.head_dim = p.i64("headDim");
  a.layout = p.layout();
  a.attn_factor = p.f32("attnFactor", 1.0f);
  if (a.head_dim % 2 != 0) throw_invalid(env, "rope: headDim must be even");
  NativeTensor* tx = arg(info, 0, "rope", "x", a.tokens * a.heads * a.head_dim);
  NativeTensor* tp = arg(info, 1, "rope", "positions", a.tokens);
  NativeTensor* tf = arg(info, 2, "rope", "invFreq", a.head_dim / 2);
  NativeTensor* to = arg(info, 3, "rope", "out", a.tokens * a.heads * a.head_dim);
  require_dtype(env, tp, DType::i32, "rope", "positions");
  require_dtype(env, tf, DType::f32, "rope", "invFreq");
  require_dtype(env, to, tx->dtype(), "rope", "out");
  Device* d = same_device(env, "rope", {tx, tp, tf, to});
  a.in = tx->buffer()->data();
  a.out = to->buffer()->data();
  a.dtype = tx->dtype();
  a.positions = static_cast<const int32_t*>(tp->buffer()->data());
  a.inv_freq = static_cast<const float*>(tf->buffer()->data());
  enqueue_op(d, {tx->buffer(), tp->buffer(), tf->buffer()}, {to->buffer()}, [a](Backend& be) { return be.rope(a); });
  return env.Undefined();
}

Napi::Value rerotate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 5, "rerotate");
  RerotateArgs a;
  a.tokens = p.i64("tokens");
  a.heads = p.i64("heads");
  a.head_dim = p.i64("headDim");
  a.rotary_dim = p.obj.Get("rotaryDim").IsUndefined() ? 0 : p.i64("rotaryDim");
  a.layout = p.layout();
  int64_t rotary_dim = 0;
  if (Status st = rerotate_rotary_dim("rerotate", a.head_dim, a.rotary_dim, &rotary_dim); !st.ok()) throw_invalid(env, st.message);
  NativeTensor* tx = arg(info, 0, "rerotate", "keys", a.tokens * a.heads * a.head_dim);
  NativeTensor* tfrom = arg(info, 1, "rerotate", "from", a.tokens);
  NativeTensor* tto = arg(info, 2, "rerotate", "to", a.tokens);
  NativeTensor* tf = arg(info, 3, "rerotate", "invFreq", rotary_dim / 2);
  NativeTensor* to = arg(info, 4, "rerotate", "out", a.tokens * a.heads * a.head_dim);
  require_dtype(env, tfrom, DType::i32, "rerotate", "from");
  require_dtype(env, tto, DType::i32, "rerotate", "to");
  require_dtype(env, tf, DType::f32, "rerotate", "invFreq");
  require_dtype(env, to, tx->dtype(), "rerotate", "out");
  Device* d = same_device(env, "rerotate", {tx, tfrom, tto, tf, to});
  a.in = tx->buffer()->data();
  a.out = to->buffer()->data();
  a.dtype = tx->dtype();
  a.from_pos = static_cast<const int32_t*>(tfrom->buffer()->data());
  a.to_pos = static_cast<const int32_t*>(tto->buffer()->data());
  a.inv_freq = static_cast<const float*>(tf->buffer()->data());
  enqueue_op(d, {tx->buffer(), tfrom->buffer(), tto->buffer(), tf->buffer()}, {to->buffer()},
             [a](Backend& be) { return be.rerotate(a); });
  return env.Undefined();
}

// rerotatePages(srcPool, dstPool, invFreq, runs, positions, params, perRunHost): moves keys
// between pages of the pools (dstPool is written in place; it may be srcPool). runs: i32
// tensor of 8 per run (RerotateRun), positions: i32 tensor; lib/ops.ts checked their contents
// against the pool when it packed them (ops.keyMoves). With perRunHost (an Int32Array holding
// the same runs, checked here) the runs go as one rerotate each: the engine's former path, for
// equivalence tests and benchmarks.
Napi::Value rerotate_pages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 5, "rerotatePages");
  RerotatePagesArgs a;
  a.num_pages = p.i64("numPages");
  a.page_size = p.i64("pageSize");
  a.kv_heads = p.i64("kvHeads");
  a.head_dim = p.i64("headDim");
  a.rotary_dim = p.i64("rotaryDim");
  a.num_runs = p.i64("numRuns");
  a.layout = p.layout();
  int64_t rotary_dim = 0;
  if (Status st = rerotate_rotary_dim("rerotatePages", a.head_dim, a.rotary_dim, &rotary_dim); !st.ok()) throw_invalid(env, st.message);
  if (a.page_size < 1) throw_invalid(env, "rerotatePages: param pageSize must be positive");
  const int64_t pool = a.num_pages * a.page_size * a.kv_heads * a.head_dim;
  NativeTensor* ts = arg(info, 0, "rerotatePages", "srcPool", pool);
  NativeTensor* td = arg(info, 1, "rerotatePages", "dstPool", pool);
  NativeTensor* tf = arg(info, 2, "rerotatePages", "invFreq", rotary_dim / 2);
  NativeTensor* tr = arg(info, 3, "rerotatePages", "runs", std::max<int64_t>(1, a.num_runs) * 8);
  NativeTensor* tp = NativeTensor::unwrap(info[4], "rerotatePages: positions");
  if (!is_float(ts->dtype())) throw_invalid(env, "rerotatePages: srcPool must be f32, f16 or bf16");
  require_dtype(env, td, ts->dtype(), "rerotatePages", "dstPool");
  require_dtype(env, tf, DType::f32, "rerotatePages", "invFreq");
  require_dtype(env, tr, DType::i32, "rerotatePages", "runs");
  require_dtype(env, tp, DType::i32, "rerotatePages", "positions");
  std::vector<RerotateRun> host;
  const bool per_run = !info[6].IsNull() && !info[6].IsUndefined();
  if (per_run) {
    if (!info[6].IsTypedArray() || info[6].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw_invalid(env, "rerotatePages: perRunHost must be an Int32Array");
    Napi::Int32Array packed = info[6].As<Napi::Int32Array>();
    if (static_cast<int64_t>(packed.ElementLength()) != a.num_runs * 8) throw_invalid(env, "rerotatePages: perRunHost must hold 8 integers per run");
    host.resize(static_cast<size_t>(a.num_runs));
    if (a.num_runs) std::memcpy(static_cast<void*>(host.data()), packed.Data(), packed.ElementLength() * sizeof(int32_t));
    if (Status st = check_rerotate_runs(host.data(), a.num_runs, a.num_pages, a.page_size, tp->numel(), a.kv_heads); !st.ok()) throw_invalid(env, st.message);
    for (const RerotateRun& m : host)
      if (m.head != 0) throw_invalid(env, "rerotatePages: perRun moves every KV head of its rows; a move with `head` needs the fused launch");
  }
  Device* d = same_device(env, "rerotatePages", {ts, td, tf, tr, tp});
  a.src_pool = ts->buffer()->data();
  a.dst_pool = td->buffer()->data();
  a.dtype = ts->dtype();
  a.inv_freq = static_cast<const float*>(tf->buffer()->data());
  a.runs = static_cast<const RerotateRun*>(tr->buffer()->data());
  a.positions = static_cast<const int32_t*>(tp->buffer()->data());
  enqueue_op(d, {ts->buffer(), tf->buffer(), tr->buffer(), tp->buffer()}, {td->buffer()}, [a, host = std::move(host), per_run](Backend& be) {
    if (!per_run) return be.rerotate_pages(a);
    const int64_t row = a.kv_heads * a.head_dim;
    const size_t elem = dtype_size(a.dtype);
    for (const RerotateRun& m : host) {
      RerotateArgs one;
      one.in = static_cast<const char*>(a.src_pool) + static_cast<size_t>((m.src_page * a.page_size + m.src_row) * row) * elem;
      one.out = static_cast<char*>(a.dst_pool) + static_cast<size_t>((m.dst_page * a.page_size + m.dst_row) * row) * elem;
      one.dtype = a.dtype;
      one.tokens = m.rows;
      one.heads = a.kv_heads;
      one.head_dim = a.head_dim;
      one.rotary_dim = a.rotary_dim;
      one.from_pos = a.positions + m.from;
      one.to_pos = a.positions + m.to;
      one.inv_freq = a.inv_freq;
      one.layout = a.layout;
      KVF_RETURN_IF_ERROR(be.rerotate(one));
    }
    return Status::Ok();
  });
  return env.Undefined();
}

Napi::Value softmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 2, "softmax");
  SoftmaxArgs a;
  a.rows = p.i64("rows");
  a.cols = p.i64("cols");
  a.scale = p.f32("scale", 1.0f);
  NativeTensor* tx = arg(info, 0, "softmax", "x", a.rows * a.cols);
  NativeTensor* ty = arg(info, 1, "softmax", "out", a.rows * a.cols);
  require_dtype(env, ty, tx->dtype(), "softmax", "out");
  Device* d = same_device(env, "softmax", {tx, ty});
  a.x = tx->buffer()->data();
  a.y = ty->buffer()->data();
  a.dtype = tx->dtype();
  enqueue_op(d, {tx->buffer()}, {ty->buffer()}, [a](Backend& be) { return be.softmax(a); });
  return env.Undefined();
}

Napi::Value silu_mul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 3, "siluMul");
  SiluMulArgs a;
  a.n = p.i64("n");
  NativeTensor* tg = arg(info, 0, "siluMul", "gate", a.n);
  NativeTensor* tu = arg(info, 1, "siluMul", "up", a.n);
  NativeTensor* to = arg(info, 2, "siluMul", "out", a.n);
  require_dtype(env, tu, tg->dtype(), "siluMul", "up");
  require_dtype(env, to, tg->dtype(), "siluMul", "out");
  Device* d = same_device(env, "siluMul", {tg, tu, to});
  a.gate = tg->buffer()->data();
  a.up = tu->buffer()->data();
  a.out = to->buffer()->data();
  a.dtype = tg->dtype();
  enqueue_op(d, {tg->buffer(), tu->buffer()}, {to->buffer()}, [a](Backend& be) { return be.silu_mul(a); });
  return env.Undefined();
}

Napi::Value embedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 3, "embedding");
  EmbeddingArgs a;
  a.tokens = p.i64("tokens");
  a.vocab = p.i64("vocab");
  a.dim = p.i64("dim");
  NativeTensor* tt = arg(info, 0, "embedding", "table", a.vocab * a.dim);
  NativeTensor* ti = arg(info, 1, "embedding", "ids", a.tokens);
  NativeTensor* to = arg(info, 2, "embedding", "out", a.tokens * a.dim);
  require_dtype(env, ti, DType::i32, "embedding", "ids");
  Device* d = same_device(env, "embedding", {tt, ti, to});
  a.table = tt->buffer()->data();
  a.table_dtype = tt->dtype();
  a.ids = static_cast<const int32_t*>(ti->buffer()->data());
  a.out = to->buffer()->data();
  a.out_dtype = to->dtype();
  enqueue_op(d, {tt->buffer(), ti->buffer()}, {to->buffer()}, [a](Backend& be) { return be.embedding(a); });
  return env.Undefined();
}

Napi::Value topk(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 3, "topk");
  TopKArgs a;
  a.rows = p.i64("rows");
  a.cols = p.i64("cols");
  a.k = p.i64("k");
  if (a.k < 1 || a.k > a.cols) throw_invalid(env, "topk: k must be in [1, cols]");
  NativeTensor* tx = arg(info, 0, "topk", "x", a.rows * a.cols);
  NativeTensor* tv = arg(info, 1, "topk", "values", a.rows * a.k);
  NativeTensor* ti = arg(info, 2, "topk", "indices", a.rows * a.k);
  require_dtype(env, tv, DType::f32, "topk", "values");
  require_dtype(env, ti, DType::i32, "topk", "indices");
  Device* d = same_device(env, "topk", {tx, tv, ti});
  a.x = tx->buffer()->data();
  a.dtype = tx->dtype();
  a.values = static_cast<float*>(tv->buffer()->data());
  a.indices = static_cast<int32_t*>(ti->buffer()->data());
  enqueue_op(d, {tx->buffer()}, {tv->buffer(), ti->buffer()}, [a](Backend& be) { return be.topk(a); });
  return env.Undefined();
}

// sample(logits, params, penaltyStart, penaltyIds, out, { rows, vocab, penalties }): params are
// `rows` SampleParams packed as u8 (32 bytes each). Not part of `ops`: the engine calls the op
// itself; tests use this to compare the CUDA kernel with its CPU twin, and build valid inputs
// (offsets and ids are on the device and not re-checked here).
Napi::Value sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 5, "sample");
  SampleArgs a;
  a.rows = p.i64("rows");
  a.vocab = p.i64("vocab");
  const int64_t penalties = p.i64("penalties");
  NativeTensor* tl = arg(info, 0, "sample", "logits", a.rows * a.vocab);
  NativeTensor* tp = arg(info, 1, "sample", "params", a.rows * static_cast<int64_t>(sizeof(SampleParams)));
  NativeTensor* ts = arg(info, 2, "sample", "penaltyStart", a.rows + 1);
  NativeTensor* ti = arg(info, 3, "sample", "penaltyIds", penalties);
  NativeTensor* to = arg(info, 4, "sample", "out", a.rows);
  require_dtype(env, tl, DType::f32, "sample", "logits");
  require_dtype(env, tp, DType::u8, "sample", "params");
  require_dtype(env, ts, DType::i32, "sample", "penaltyStart");
  require_dtype(env, ti, DType::i32, "sample", "penaltyIds");
  require_dtype(env, to, DType::i32, "sample", "out");
  Device* d = same_device(env, "sample", {tl, tp, ts, ti, to});
  a.logits = static_cast<float*>(tl->buffer()->data());
  a.params = static_cast<const SampleParams*>(tp->buffer()->data());
  a.penalty_start = static_cast<const int32_t*>(ts->buffer()->data());
  a.penalty_ids = static_cast<const int32_t*>(ti->buffer()->data());
  a.out = static_cast<int32_t*>(to->buffer()->data());
  enqueue_op(d, {tp->buffer(), ts->buffer(), ti->buffer()}, {tl->buffer(), to->buffer()}, [a](Backend& be) mutable {
    if (be.kind() != DeviceKind::cuda) return be.sample(a);
    void* workspace = nullptr;
    KVF_RETURN_IF_ERROR(be.alloc(static_cast<size_t>(a.rows * a.vocab) * sizeof(double), &workspace));
    a.workspace = static_cast<double*>(workspace);
    Status st = be.sample(a);
    be.free(workspace);  // stream-ordered: after the kernel
    return st;
  });
  return env.Undefined();
}

Napi::Value cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeTensor* ti = NativeTensor::unwrap(info[0], "cast: x");
  NativeTensor* to = arg(info, 1, "cast", "out", ti->numel());
  Device* d = same_device(env, "cast", {ti, to});
  CastArgs a;
  a.in = ti->buffer()->data();
  a.in_dtype = ti->dtype();
  a.out = to->buffer()->data();
  a.out_dtype = to->dtype();
  a.n = ti->numel();
  enqueue_op(d, {ti->buffer()}, {to->buffer()}, [a](Backend& be) { return be.cast(a); });
  return env.Undefined();
}

Napi::Value add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 3, "add");
  AddArgs a;
  a.rows = p.i64("rows");
  a.cols = p.i64("cols");
  a.broadcast_b = p.flag("broadcastB");
  NativeTensor* ta = arg(info, 0, "add", "a", a.rows * a.cols);
  NativeTensor* tb = arg(info, 1, "add", "b", a.broadcast_b ? a.cols : a.rows * a.cols);
  NativeTensor* to = arg(info, 2, "add", "out", a.rows * a.cols);
  require_dtype(env, to, ta->dtype(), "add", "out");
  Device* d = same_device(env, "add", {ta, tb, to});
  a.a = ta->buffer()->data();
  a.out = to->buffer()->data();
  a.dtype = ta->dtype();
  a.b = tb->buffer()->data();
  a.b_dtype = tb->dtype();
  enqueue_op(d, {ta->buffer(), tb->buffer()}, {to->buffer()}, [a](Backend& be) { return be.add(a); });
  return env.Undefined();
}

// kvWrite(k, v, kPool, vPool, slots, params): writes into the pools in place.
Napi::Value kv_write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = params(info, 5, "kvWrite");
  KvWriteArgs a;
  a.tokens = p.i64("tokens");
  a.kv_heads = p.i64("kvHeads");
  a.head_dim = p.i64("headDim");
  a.page_size = p.i64("pageSize");
  a.num_pages = p.i64("numPages");
  const int64_t row = a.kv_heads * a.head_dim;
  NativeTensor* tk = arg(info, 0, "kvWrite", "k", a.tokens * row);
  NativeTensor* tv = arg(info, 1, "kvWrite", "v", a.tokens * row);
  NativeTensor* tkp = arg(info, 2, "kvWrite", "kPool", a.num_pages * a.page_size * row);
  NativeTensor* tvp = arg(info, 3, "kvWrite", "vPool", a.num_pages * a.page_size * row);
  NativeTensor* ts = arg(info, 4, "kvWrite", "slots", a.tokens);
  require_dtype(env, tv, tk->dtype(), "kvWrite", "v");
  require_dtype(env, tvp, tkp->dtype(), "kvWrite", "vPool");
  require_dtype(env, ts, DType::i32, "kvWrite", "slots");
  Device* d = same_device(env, "kvWrite", {tk, tv, tkp, tvp, ts});
  a.k = tk->buffer()->data();
  a.v = tv->buffer()->data();
  a.src_dtype = tk->dtype();
  a.k_pool = tkp->buffer()->data();
  a.v_pool = tvp->buffer()->data();
  a.pool_dtype = tkp->dtype();
  a.slots = static_cast<const int32_t*>(ts->buffer()->data());
  enqueue_op(d, {tk->buffer(), tv->buffer(), ts->buffer(), tkp->buffer(), tvp->buffer()}, {tkp->buffer(), tvp->buffer()},
             [a](Backend& be) { return be.kv_write(a); });
  return env.Undefined();
}

// pagedAttention(q, kPool, vPool, out, qStart, kvLen, tableStart, pageTable, visible, attnSum | null, params,
//                firstVisible?, vPageTable?, pageRows?, kvAttnSum?, massRanges?, rangeMass?, ctxSplit?)
// params.numRanges: ranges per sequence in massRanges (seqs x numRanges x 2 i32) and rangeMass
// (totalQ x heads x numRanges f32); both or neither. ctxSplit: two-part (APE) attention, one
// ContextSplit per sequence packed as 4 i32 (begin, end, then temperature and scale's f32 bits).
Napi::Value paged_attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "pagedAttention";
  Params p = params(info, 10, op);
  PagedAttentionArgs a;
  a.heads = p.i64("heads");
  a.kv_heads = p.i64("kvHeads");
  a.head_dim = p.i64("headDim");
  a.page_size = p.i64("pageSize");
  a.num_pages = p.i64("numPages");
  a.seqs = p.i64("seqs");
  a.total_q = p.i64("totalQ");
  a.max_kv = p.i64("maxKv");
  a.scale = p.f32("scale", 1.0f);
  if (a.kv_heads == 0 || a.heads % a.kv_heads != 0) throw_invalid(env, "pagedAttention: kvHeads must divide heads");
  if (a.page_size <= 0) throw_invalid(env, "pagedAttention: pageSize must be positive");
  NativeTensor* tq = arg(info, 0, op, "q", a.total_q * a.heads * a.head_dim);
  NativeTensor* tkp = arg(info, 1, op, "kPool", a.num_pages * a.page_size * a.kv_heads * a.head_dim);
  NativeTensor* tvp = arg(info, 2, op, "vPool", a.num_pages * a.page_size * a.kv_heads * a.head_dim);
  NativeTensor* to = arg(info, 3, op, "out", a.total_q * a.heads * a.head_dim);
  NativeTensor* tqs = arg(info, 4, op, "qStart", a.seqs + 1);
  NativeTensor* tkl = arg(info, 5, op, "kvLen", a.seqs);
  NativeTensor* tts = arg(info, 6, op, "tableStart", a.seqs + 1);
  NativeTensor* tpt = NativeTensor::unwrap(info[7], "pagedAttention: pageTable");
  NativeTensor* tvis = arg(info, 8, op, "visible", a.total_q);
  for (NativeTensor* t : {tqs, tkl, tts, tpt, tvis}) require_dtype(env, t, DType::i32, op, "index arrays");
  require_dtype(env, tvp, tkp->dtype(), op, "vPool");
  Device* d = same_device(env, op, {tq, tkp, tvp, to, tqs, tkl, tts, tpt, tvis});
  std::vector<BufferRef> outputs{to->buffer()};
  if (!info[9].IsNull() && !info[9].IsUndefined()) {
    NativeTensor* ts = arg(info, 9, op, "attnSum", a.seqs * a.heads * a.max_kv);
    require_dtype(env, ts, DType::f32, op, "attnSum");
    if (ts->device() != d) throw_invalid(env, "pagedAttention: attnSum must be on the same device");
    a.attn_sum = static_cast<float*>(ts->buffer()->data());
    outputs.push_back(ts->buffer());
  }
  a.q = tq->buffer()->data();
  a.q_dtype = tq->dtype();
  a.out = to->buffer()->data();
  a.out_dtype = to->dtype();
  a.k_pool = tkp->buffer()->data();
  a.v_pool = tvp->buffer()->data();
  a.kv_dtype = tkp->dtype();
  a.q_start = static_cast<const int32_t*>(tqs->buffer()->data());
  a.kv_len = static_cast<const int32_t*>(tkl->buffer()->data());
  a.table_start = static_cast<const int32_t*>(tts->buffer()->data());
  a.page_table = static_cast<const int32_t*>(tpt->buffer()->data());
  a.page_table_len = tpt->numel();
  a.visible = static_cast<const int32_t*>(tvis->buffer()->data());
  std::vector<BufferRef> inputs{tq->buffer(), tkp->buffer(), tvp->buffer(), tqs->buffer(), tkl->buffer(),
                                tts->buffer(), tpt->buffer(), tvis->buffer()};
  if (info.Length() > 11 && !info[11].IsNull() && !info[11].IsUndefined()) {
    NativeTensor* tfv = arg(info, 11, op, "firstVisible", a.total_q);
    require_dtype(env, tfv, DType::i32, op, "firstVisible");
    if (tfv->device() != d) throw_invalid(env, "pagedAttention: firstVisible must be on the same device");
    a.first_visible = static_cast<const int32_t*>(tfv->buffer()->data());
    inputs.push_back(tfv->buffer());
  }
  // Value page table and rows per page: one entry per page-table entry each.
  for (int i : {12, 13}) {
    if (info.Length() <= static_cast<size_t>(i) || info[i].IsNull() || info[i].IsUndefined()) continue;
    const char* name = i == 12 ? "vPageTable" : "pageRows";
    NativeTensor* t = arg(info, i, op, name, a.page_table_len);
    require_dtype(env, t, DType::i32, op, name);
    if (t->device() != d) throw_invalid(env, std::string("pagedAttention: ") + name + " must be on the same device");
    (i == 12 ? a.v_page_table : a.page_rows) = static_cast<const int32_t*>(t->buffer()->data());
    inputs.push_back(t->buffer());
  }
  // Scores beyond attnSum: column sums per kv head, and probability mass per slot range.
  if (info.Length() > 14 && !info[14].IsNull() && !info[14].IsUndefined()) {
    NativeTensor* t = arg(info, 14, op, "kvAttnSum", a.seqs * a.kv_heads * a.max_kv);
    require_dtype(env, t, DType::f32, op, "kvAttnSum");
    if (t->device() != d) throw_invalid(env, "pagedAttention: kvAttnSum must be on the same device");
    a.kv_attn_sum = static_cast<float*>(t->buffer()->data());
    outputs.push_back(t->buffer());
  }
  const bool has_ranges = info.Length() > 15 && !info[15].IsNull() && !info[15].IsUndefined();
  const bool has_mass = info.Length() > 16 && !info[16].IsNull() && !info[16].IsUndefined();
  if (has_ranges != has_mass) throw_invalid(env, "pagedAttention: massRanges and rangeMass go together");
  if (has_mass) {
    a.num_ranges = p.i64("numRanges");
    NativeTensor* tr = arg(info, 15, op, "massRanges", a.seqs * a.num_ranges * 2);
    NativeTensor* tm = arg(info, 16, op, "rangeMass", a.total_q * a.heads * a.num_ranges);
    require_dtype(env, tr, DType::i32, op, "massRanges");
    require_dtype(env, tm, DType::f32, op, "rangeMass");
    if (tr->device() != d || tm->device() != d) throw_invalid(env, "pagedAttention: massRanges and rangeMass must be on the same device");
    a.mass_ranges = static_cast<const int32_t*>(tr->buffer()->data());
    a.range_mass = static_cast<float*>(tm->buffer()->data());
    inputs.push_back(tr->buffer());
    outputs.push_back(tm->buffer());
  }
  // EMA weighting of the column sums: ln beta per sequence (paged_attention.h, col_log_decay).
  if (info.Length() > 17 && !info[17].IsNull() && !info[17].IsUndefined()) {
    NativeTensor* t = arg(info, 17, op, "colLogDecay", a.seqs);
    require_dtype(env, t, DType::f32, op, "colLogDecay");
    if (t->device() != d) throw_invalid(env, "pagedAttention: colLogDecay must be on the same device");
    a.col_log_decay = static_cast<const float*>(t->buffer()->data());
    inputs.push_back(t->buffer());
  }
  // Column sums over each sequence's last rows only (SnapKV's observation window).
  if (info.Length() > 18 && !info[18].IsNull() && !info[18].IsUndefined()) {
    NativeTensor* t = arg(info, 18, op, "colLastRows", a.seqs);
    require_dtype(env, t, DType::i32, op, "colLastRows");
    if (t->device() != d) throw_invalid(env, "pagedAttention: colLastRows must be on the same device");
    a.col_last_rows = static_cast<const int32_t*>(t->buffer()->data());
    inputs.push_back(t->buffer());
  }
  if (info.Length() > 19 && !info[19].IsNull() && !info[19].IsUndefined()) {
    static_assert(sizeof(ContextSplit) == 4 * sizeof(int32_t), "ContextSplit packs as 4 i32");
    NativeTensor* tc = arg(info, 19, op, "ctxSplit", a.seqs * 4);
    require_dtype(env, tc, DType::i32, op, "ctxSplit");
    if (tc->device() != d) throw_invalid(env, "pagedAttention: ctxSplit must be on the same device");
    a.ctx_split = static_cast<const ContextSplit*>(tc->buffer()->data());
    inputs.push_back(tc->buffer());
  }
  enqueue_op(d, std::move(inputs), std::move(outputs), [a](Backend& be) { return be.paged_attention(a); });
  return env.Undefined();
}

template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
Napi::Value guard(const Napi::CallbackInfo& info) {
  return guarded(info, Fn);
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  Napi::Object ops = Napi::Object::New(env);
  ops.Set("matmul", Napi::Function::New<guard<matmul>>(env, "matmul"));
  ops.Set("rmsnorm", Napi::Function::New<guard<rmsnorm>>(env, "rmsnorm"));
  ops.Set("rope", Napi::Function::New<guard<rope>>(env, "rope"));
  ops.Set("rerotate", Napi::Function::New<guard<rerotate>>(env, "rerotate"));
  ops.Set("rerotatePages", Napi::Function::New<guard<rerotate_pages>>(env, "rerotatePages"));
  ops.Set("softmax", Napi::Function::New<guard<softmax>>(env, "softmax"));
  ops.Set("siluMul", Napi::Function::New<guard<silu_mul>>(env, "siluMul"));
  ops.Set("embedding", Napi::Function::New<guard<embedding>>(env, "embedding"));
  ops.Set("topk", Napi::Function::New<guard<topk>>(env, "topk"));
  ops.Set("sample", Napi::Function::New<guard<sample>>(env, "sample"));
  ops.Set("cast", Napi::Function::New<guard<cast>>(env, "cast"));
  ops.Set("add", Napi::Function::New<guard<add>>(env, "add"));
  ops.Set("kvWrite", Napi::Function::New<guard<kv_write>>(env, "kvWrite"));
  ops.Set("pagedAttention", Napi::Function::New<guard<paged_attention>>(env, "pagedAttention"));
  exports.Set("ops", ops);
}

}  // namespace kvf::napi
