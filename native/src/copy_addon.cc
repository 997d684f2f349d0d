// N-API glue for the copy primitive: every call runs on a libuv worker thread and returns a
// Promise. Cancellation is an Int32Array on a SharedArrayBuffer that JS sets with Atomics.store.
#include "copy_addon.h"

#include <memory>
#include <utility>

#include "copytree.h"

namespace {

Napi::Error MakeError(Napi::Env env, const loom::CopyError& ce) {
  Napi::Error e = Napi::Error::New(env, ce.message);
  const char* kind = ce.kind == loom::ERR_REFUSED ? "refused" : ce.kind == loom::ERR_CANCELLED ? "cancelled" : "io";
  e.Set("kind", Napi::String::New(env, kind));
  e.Set("errno", Napi::Number::New(env, ce.err));
  e.Set("syscall", Napi::String::New(env, ce.syscall));
  e.Set("path", Napi::String::New(env, ce.path));
  return e;
}

const char* StrategyName(int s) {
  switch (s) {
    case loom::STRAT_SUBVOL: return "subvolume";
    case loom::STRAT_REFLINK: return "reflink";
    default: return "copy";
  }
}

struct Progress {
  double files, bytes;
};

class CopyWorker : public Napi::AsyncProgressWorker<Progress> {
 public:
  CopyWorker(Napi::Env env, std::string src, std::string dest, loom::Strategy strategy, int threads, int tick_ms,
             Napi::Int32Array cancel, Napi::Function progress)
      : Napi::AsyncProgressWorker<Progress>(env, "loom.copyTree"),
        deferred_(Napi::Promise::Deferred::New(env)),
        src_(std::move(src)),
        dest_(std::move(dest)),
        strategy_(strategy),
        threads_(threads),
        tick_ms_(tick_ms) {
    cancel_ref_ = Napi::Persistent(cancel);
    cancel_ptr_ = cancel.Data();
    if (!progress.IsEmpty()) progress_ = Napi::Persistent(progress);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute(const ExecutionProgress& progress) override {
    loom::CopyOpts o;
    o.strategy = strategy_;
    o.threads = threads_;
    o.cancel = cancel_ptr_;
    o.tick_ms = tick_ms_;
    if (!progress_.IsEmpty()) {
      o.tick = [&]() {
        Progress p{static_cast<double>(stats_.files.load()), static_cast<double>(stats_.bytes.load())};
        progress.Send(&p, 1);
      };
    }
    result_ = loom::copy_tree(src_, dest_, o, stats_, err_);
  }

  void OnProgress(const Progress* p, size_t count) override {
    if (!p || count == 0 || progress_.IsEmpty()) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    progress_.Call({Napi::Number::New(env, p->files), Napi::Number::New(env, p->bytes)});
    if (env.IsExceptionPending()) env.GetAndClearPendingException();  // a throwing callback must not kill the copy
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (result_ < 0) {
      deferred_.Reject(MakeError(env, err_).Value());
      return;
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("strategy", StrategyName(result_));
    r.Set("files", Napi::Number::New(env, static_cast<double>(stats_.files.load())));
    r.Set("dirs", Napi::Number::New(env, static_cast<double>(stats_.dirs.load())));
    r.Set("bytes", Napi::Number::New(env, static_cast<double>(stats_.bytes.load())));
    r.Set("symlinks", Napi::Number::New(env, static_cast<double>(stats_.symlinks.load())));
    r.Set("hardlinks", Napi::Number::New(env, static_cast<double>(stats_.hardlinks.load())));
    r.Set("specials", Napi::Number::New(env, static_cast<double>(stats_.specials.load())));
    deferred_.Resolve(r);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string src_, dest_;
  loom::Strategy strategy_;
  int threads_, tick_ms_;
  Napi::Reference<Napi::Int32Array> cancel_ref_;
  const int32_t* cancel_ptr_ = nullptr;
  Napi::FunctionReference progress_;
  loom::CopyStats stats_;
  loom::CopyError err_;
  int result_ = -1;
};

// removeTree / createSubvolume: one path, no result.
class PathWorker : public Napi::AsyncWorker {
 public:
  using Fn = int (*)(const std::string&, loom::CopyError&);
  PathWorker(Napi::Env env, Fn fn, std::string path)
      : Napi::AsyncWorker(env, "loom.fs"), deferred_(Napi::Promise::Deferred::New(env)), fn_(fn), path_(std::move(path)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { rc_ = fn_(path_, err_); }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    if (rc_ < 0) deferred_.Reject(MakeError(Env(), err_).Value());
    else deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Fn fn_;
  std::string path_;
  loom::CopyError err_;
  int rc_ = -1;
};

Napi::Value Throw(Napi::Env env, const char* msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

// copyTree(src, dest, {strategy, threads, progressMs}, cancel: Int32Array, onProgress?) -> Promise
Napi::Value CopyTree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject() ||
      !info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    return Throw(env, "copyTree(src, dest, opts, cancel: Int32Array, onProgress?)");
  Napi::Object o = info[2].As<Napi::Object>();
  int strategy = o.Get("strategy").IsNumber() ? o.Get("strategy").As<Napi::Number>().Int32Value() : 0;
  int threads = o.Get("threads").IsNumber() ? o.Get("threads").As<Napi::Number>().Int32Value() : 0;
  int tick = o.Get("progressMs").IsNumber() ? o.Get("progressMs").As<Napi::Number>().Int32Value() : 100;
  if (strategy < 0 || strategy > 3) return Throw(env, "copyTree: strategy must be 0..3");
  Napi::Function progress;
  if (info.Length() > 4 && info[4].IsFunction()) progress = info[4].As<Napi::Function>();
  auto* w = new CopyWorker(env, info[0].As<Napi::String>(), info[1].As<Napi::String>(),
                           static_cast<loom::Strategy>(strategy), threads, tick, info[3].As<Napi::Int32Array>(), progress);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value RunPath(const Napi::CallbackInfo& info, PathWorker::Fn fn, const char* usage) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return Throw(env, usage);
  auto* w = new PathWorker(env, fn, info[0].As<Napi::String>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value RemoveTree(const Napi::CallbackInfo& info) { return RunPath(info, loom::remove_tree, "removeTree(path)"); }
Napi::Value CreateSubvolume(const Napi::CallbackInfo& info) {
  return RunPath(info, loom::create_subvolume, "createSubvolume(path)");
}

// isSubvolume(path) -> boolean (synchronous: two stat calls)
Napi::Value IsSubvolume(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return Throw(env, "isSubvolume(path)");
  loom::CopyError e;
  int r = loom::is_subvolume(info[0].As<Napi::String>(), e);
  if (r < 0) {
    MakeError(env, e).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, r == 1);
}

}  // namespace

void RegisterCopy(Napi::Env env, Napi::Object exports) {
  exports.Set("copyTree", Napi::Function::New(env, CopyTree, "copyTree"));
  exports.Set("removeTree", Napi::Function::New(env, RemoveTree, "removeTree"));
  exports.Set("createSubvolume", Napi::Function::New(env, CreateSubvolume, "createSubvolume"));
  exports.Set("isSubvolume", Napi::Function::New(env, IsSubvolume, "isSubvolume"));
}
