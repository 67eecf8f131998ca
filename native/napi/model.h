// Engine handles for JavaScript: NativeModel (weights, KV pool, step()), NativeSequence and
// NativeKvBlock (a stored run of KV pages: a document or a store's prefix).
#pragma once

#include <napi.h>

#include "../engine/model.h"

namespace kvf::napi {

class NativeSequence : public Napi::ObjectWrap<NativeSequence> {
 public:
  static Napi::Function define(Napi::Env env);
  static NativeSequence* unwrap(Napi::Value v, const char* what);
  explicit NativeSequence(const Napi::CallbackInfo& info);
  const std::shared_ptr<Sequence>& sequence() const { return seq_; }

 private:
  Napi::Value length(const Napi::CallbackInfo& info);
  Napi::Value layer_lengths(const Napi::CallbackInfo& info);
  Napi::Value positions(const Napi::CallbackInfo& info);
  Napi::Value reseed(const Napi::CallbackInfo& info);
  Napi::Value truncate(const Napi::CallbackInfo& info);
  Napi::Value clear(const Napi::CallbackInfo& info);
  Napi::Value release(const Napi::CallbackInfo& info);
  Napi::Value export_block(const Napi::CallbackInfo& info);
  Napi::Value spans(const Napi::CallbackInfo& info);
  Napi::Value drop_blocks(const Napi::CallbackInfo& info);
  Napi::Value set_layer_shift(const Napi::CallbackInfo& info);
  std::shared_ptr<Sequence> seq_;
};

class NativeKvBlock : public Napi::ObjectWrap<NativeKvBlock> {
 public:
  static Napi::Function define(Napi::Env env);
  static NativeKvBlock* unwrap(Napi::Value v, const char* what);
  static Napi::Value wrap(Napi::Env env, std::shared_ptr<KvBlock> block);
  explicit NativeKvBlock(const Napi::CallbackInfo& info);
  const std::shared_ptr<KvBlock>& block() const { return block_; }

 private:
  Napi::Value tokens(const Napi::CallbackInfo& info);
  Napi::Value pages(const Napi::CallbackInfo& info);
  Napi::Value share(const Napi::CallbackInfo& info);
  Napi::Value release(const Napi::CallbackInfo& info);
  Napi::Value read(const Napi::CallbackInfo& info);
  Napi::Value positions(const Napi::CallbackInfo& info);
  std::shared_ptr<KvBlock> block_;
};

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function define(Napi::Env env);
  static Napi::Value create(const Napi::CallbackInfo& info);  // binding.createModel
  explicit NativeModel(const Napi::CallbackInfo& info);

 private:
  Model& get(const Napi::CallbackInfo& info, const char* what);
  Napi::Value new_sequence(const Napi::CallbackInfo& info);
  Napi::Value step(const Napi::CallbackInfo& info);
  Napi::Value free_pages(const Napi::CallbackInfo& info);
  Napi::Value attach(const Napi::CallbackInfo& info);
  Napi::Value import_block(const Napi::CallbackInfo& info);
  Napi::Value move_blocks(const Napi::CallbackInfo& info);
  Napi::Value compact(const Napi::CallbackInfo& info);
  Napi::Value gather_heads(const Napi::CallbackInfo& info);
  Napi::Value release(const Napi::CallbackInfo& info);
  std::shared_ptr<Model> model_;
};

}  // namespace kvf::napi
