// libbpf loader for the weaver audit (ebpf/audit.bpf.c): open → size maps → load → attach each
// program on its own → a thread polls the ring buffer and hands raw records to JS in batches.
// Only loom-audit-sidecar loads this addon; loom-server never does.
#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <errno.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

extern "C" {
#include "audit.h"
#include "audit.skel.h"
#include "audit_fentry.skel.h"
#include "probe.skel.h"
}

namespace {

constexpr size_t kBatchFlushBytes = 1 << 20;

int silent_print(enum libbpf_print_level level, const char *fmt, va_list args) {
  if (level == LIBBPF_WARN && getenv("LOOM_AUDIT_LIBBPF_DEBUG")) return vfprintf(stderr, fmt, args);
  if (level == LIBBPF_DEBUG && getenv("LOOM_AUDIT_LIBBPF_DEBUG")) return vfprintf(stderr, fmt, args);
  return 0;
}

std::string errstr(int err) {
  char buf[128];
  libbpf_strerror(err, buf, sizeof buf);
  return std::string(buf);
}

// Tracepoint programs whose tracepoint this kernel lacks are not loaded (e.g. fchmodat2 < 6.6).
bool tracepoint_exists(const char *sec) {
  const char *p = strchr(sec, '/');
  if (!p || strncmp(sec, "tracepoint/", 11) != 0) return true;
  std::string path = std::string("/sys/kernel/tracing/events/") + (p + 1) + "/id";
  if (access(path.c_str(), F_OK) == 0) return true;
  path = std::string("/sys/kernel/debug/tracing/events/") + (p + 1) + "/id";
  return access(path.c_str(), F_OK) == 0;
}

// fexit programs whose kernel function this kernel lacks (fchmodat2 < 6.6; the legacy syscalls
// on arm64) are not loaded either: one missing target would fail the whole object's load.
bool function_exists(const char *sec) {
  const char *p = strchr(sec, '/');
  if (!p || strncmp(sec, "fexit/", 6) != 0) return true;
  static btf *vmlinux = btf__load_vmlinux_btf();
  if (!vmlinux) return true;  // let the load report it
  return btf__find_by_name_kind(vmlinux, p + 1, BTF_KIND_FUNC) >= 0;
}

class Audit : public Napi::ObjectWrap<Audit> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "AuditBpf",
                       {InstanceMethod("addCgroup", &Audit::AddCgroup), InstanceMethod("removeCgroup", &Audit::RemoveCgroup),
                        InstanceMethod("start", &Audit::Start), InstanceMethod("pause", &Audit::Pause),
                        InstanceMethod("resume", &Audit::Resume), InstanceMethod("lost", &Audit::Lost),
                        InstanceMethod("ringUtilization", &Audit::RingUtilization), InstanceMethod("close", &Audit::Close)});
  }

  // new AuditBpf({ family: 'tracepoint' | 'fentry', ringBytes, ancestorLevels, sensitive: string[] })
  // Both families share the maps and the record layout; only how syscalls are hooked differs.
  explicit Audit(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Audit>(info) {
    Napi::Env env = info.Env();
    libbpf_set_print(silent_print);
    Napi::Object opts = info.Length() > 0 && info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
    uint32_t ring = opts.Has("ringBytes") ? opts.Get("ringBytes").As<Napi::Number>().Uint32Value() : (8u << 20);
    uint32_t levels = opts.Has("ancestorLevels") ? opts.Get("ancestorLevels").As<Napi::Number>().Uint32Value() : 0;
    family_ = opts.Has("family") ? opts.Get("family").As<Napi::String>().Utf8Value() : "tracepoint";
    if (family_ == "fentry") {
      fe_ = audit_fentry_bpf__open();
      if (fe_) fe_->rodata->ancestor_levels = levels, obj_ = fe_->obj;
    } else if (family_ == "tracepoint") {
      skel_ = audit_bpf__open();
      if (skel_) skel_->rodata->ancestor_levels = levels, obj_ = skel_->obj;
    } else {
      Napi::Error::New(env, "audit: unknown hook family " + family_ + " (tracepoint or fentry)").ThrowAsJavaScriptException();
      return;
    }
    if (!obj_) {
      Napi::Error::New(env, "audit: cannot open the BPF object: " + errstr(-errno)).ThrowAsJavaScriptException();
      return;
    }
    events_ = bpf_object__find_map_by_name(obj_, "events");
    weavers_ = bpf_object__find_map_by_name(obj_, "weavers");
    lost_ = bpf_object__find_map_by_name(obj_, "lost");
    sensitive_ = bpf_object__find_map_by_name(obj_, "sensitive");
    int err = bpf_map__set_max_entries(events_, ring);
    if (err) {
      Shutdown();  // a refused family leaves nothing open behind it
      Napi::Error::New(env, "audit: bad ring buffer size (a power of two of at least a page): " + errstr(err)).ThrowAsJavaScriptException();
      return;
    }
    ring_bytes_ = ring;
    bpf_program *prog;
    bpf_object__for_each_program(prog, obj_) {
      const char *sec = bpf_program__section_name(prog);
      if (!tracepoint_exists(sec) || !function_exists(sec)) {
        bpf_program__set_autoload(prog, false);
        skipped_.push_back(bpf_program__name(prog));
      }
    }
    err = fe_ ? audit_fentry_bpf__load(fe_) : audit_bpf__load(skel_);
    if (err) {
      Shutdown();
      Napi::Error::New(env, "audit: the kernel refused the " + family_ + " family's BPF programs: " + errstr(err)).ThrowAsJavaScriptException();
      return;
    }
    // sensitive path prefixes
    if (opts.Has("sensitive") && opts.Get("sensitive").IsArray()) {
      Napi::Array arr = opts.Get("sensitive").As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length() && i < N_SENSITIVE; i++) {
        std::string s = arr.Get(i).As<Napi::String>().Utf8Value();
        struct sensitive_prefix sp = {};
        sp.len = s.size() > SENSITIVE_LEN ? SENSITIVE_LEN : s.size();
        memcpy(sp.s, s.data(), sp.len);
        bpf_map__update_elem(sensitive_, &i, sizeof i, &sp, sizeof sp, BPF_ANY);
      }
    }
    Napi::Array attached = Napi::Array::New(env);
    Napi::Array failed = Napi::Array::New(env);
    bpf_object__for_each_program(prog, obj_) {
      if (!bpf_program__autoload(prog)) continue;
      bpf_link *l = bpf_program__attach(prog);
      if (!l) {
        Napi::Object f = Napi::Object::New(env);
        f.Set("program", bpf_program__name(prog));
        f.Set("error", errstr(-errno));
        failed.Set(failed.Length(), f);
        continue;
      }
      links_.push_back(l);
      attached.Set(attached.Length(), bpf_program__name(prog));
    }
    Napi::Array skipped = Napi::Array::New(env);
    for (auto &s : skipped_) skipped.Set(skipped.Length(), s);
    info.This().As<Napi::Object>().Set("attached", attached);
    info.This().As<Napi::Object>().Set("failed", failed);
    info.This().As<Napi::Object>().Set("skipped", skipped);
    info.This().As<Napi::Object>().Set("family", family_);
    // producer/consumer positions, for the utilization gauge
    long page = sysconf(_SC_PAGESIZE);
    int fd = bpf_map__fd(events_);
    void *c = mmap(nullptr, page, PROT_READ, MAP_SHARED, fd, 0);
    void *p = mmap(nullptr, page, PROT_READ, MAP_SHARED, fd, page);
    if (c != MAP_FAILED) cons_pos_ = static_cast<volatile unsigned long *>(c);
    if (p != MAP_FAILED) prod_pos_ = static_cast<volatile unsigned long *>(p);
  }

  ~Audit() override { Shutdown(); }

 private:
  Napi::Value AddCgroup(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (!obj_) return Throw(env, "audit: closed");
    bool lossless;
    uint64_t id = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
    uint32_t idx = info[1].As<Napi::Number>().Uint32Value();
    if (idx >= MAX_WEAVERS && idx != EXCLUDED_IDX) return Throw(env, "audit: weaver index out of range");
    int err = bpf_map__update_elem(weavers_, &id, sizeof id, &idx, sizeof idx, BPF_ANY);
    if (err) return Throw(env, "audit: cannot register cgroup: " + errstr(err));
    // a reused index starts with no losses of a former weaver
    return env.Undefined();
  }

  Napi::Value RemoveCgroup(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (!obj_) return env.Undefined();
    bool lossless;
    uint64_t id = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
    bpf_map__delete_elem(weavers_, &id, sizeof id, 0);
    return env.Undefined();
  }

  // lost() → [[weaverIdx, kind, count], …] for nonzero per-CPU sums
  Napi::Value Lost(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    if (!obj_) return out;
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu <= 0) return out;
    std::vector<uint64_t> vals(ncpu);
    int fd = bpf_map__fd(lost_);
    uint32_t max = info.Length() > 0 ? info[0].As<Napi::Number>().Uint32Value() : MAX_WEAVERS;
    if (max > MAX_WEAVERS) max = MAX_WEAVERS;
    for (uint32_t w = 0; w < max; w++) {
      for (uint32_t k = 0; k < K_NKINDS; k++) {
        uint32_t key = w * K_NKINDS + k;
        if (bpf_map_lookup_elem(fd, &key, vals.data()) != 0) continue;
        uint64_t sum = 0;
        for (int c = 0; c < ncpu; c++) sum += vals[c];
        if (!sum) continue;
        Napi::Array row = Napi::Array::New(env, 3);
        row.Set(0u, Napi::Number::New(env, w));
        row.Set(1u, Napi::Number::New(env, k));
        row.Set(2u, Napi::Number::New(env, static_cast<double>(sum)));
        out.Set(out.Length(), row);
      }
    }
    return out;
  }

  Napi::Value RingUtilization(const Napi::CallbackInfo &info) {
    if (!cons_pos_ || !prod_pos_) return info.Env().Null();
    unsigned long c = *cons_pos_, p = *prod_pos_;
    return Napi::Number::New(info.Env(), ring_bytes_ ? static_cast<double>(p - c) / ring_bytes_ : 0);
  }

  // start(onBatch(buffer)) — records are concatenated; each carries its length at offset 84.
  Napi::Value Start(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (!obj_) return Throw(env, "audit: closed");
    if (running_) return Throw(env, "audit: already started");
    rb_ = ring_buffer__new(bpf_map__fd(events_), &Audit::OnSample, this, nullptr);
    if (!rb_) return Throw(env, "audit: cannot open the ring buffer: " + errstr(-errno));
    // a bounded queue: when JS falls behind the thread blocks, the ring fills and the kernel counts drops
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "loom-audit-ring", 16, 1);
    running_ = true;
    thread_ = std::thread([this] { Loop(); });
    return env.Undefined();
  }

  Napi::Value Pause(const Napi::CallbackInfo &info) {
    std::lock_guard<std::mutex> g(mu_);
    paused_ = true;
    return info.Env().Undefined();
  }

  Napi::Value Resume(const Napi::CallbackInfo &info) {
    {
      std::lock_guard<std::mutex> g(mu_);
      paused_ = false;
    }
    cv_.notify_all();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo &info) {
    Shutdown();
    return info.Env().Undefined();
  }

  Napi::Value Throw(Napi::Env env, const std::string &msg) {
    Napi::Error::New(env, msg).ThrowAsJavaScriptException();
    return env.Undefined();
  }

  static int OnSample(void *ctx, void *data, size_t size) {
    auto *self = static_cast<Audit *>(ctx);
    self->batch_.append(static_cast<const char *>(data), size);
    if (self->batch_.size() >= kBatchFlushBytes) self->Flush();
    return 0;
  }

  void Flush() {
    if (batch_.empty()) return;
    auto *s = new std::string(std::move(batch_));
    batch_.clear();
    napi_status st = tsfn_.BlockingCall(s, [](Napi::Env env, Napi::Function fn, std::string *s) {
      auto buf = Napi::Buffer<char>::New(env, s->data(), s->size(), [](Napi::Env, char *, std::string *s) { delete s; }, s);
      fn.Call({buf});
    });
    if (st != napi_ok) delete s;
  }

  void Loop() {
    while (running_) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [this] { return !paused_ || !running_; });
      }
      if (!running_) break;
      int n = ring_buffer__poll(rb_, 100);
      if (n < 0 && n != -EINTR) break;
      Flush();
    }
    Flush();
  }

  void Shutdown() {
    if (running_) {
      running_ = false;
      cv_.notify_all();
      // The poll thread may be blocked handing a batch to this (JS) thread: abort the queue so
      // that call returns instead of waiting for us forever, then join.
      tsfn_.Abort();
      if (thread_.joinable()) thread_.join();
    }
    if (rb_) {
      ring_buffer__free(rb_);
      rb_ = nullptr;
    }
    long page = sysconf(_SC_PAGESIZE);
    if (cons_pos_) munmap((void *)cons_pos_, page), cons_pos_ = nullptr;
    if (prod_pos_) munmap((void *)prod_pos_, page), prod_pos_ = nullptr;
    for (auto *l : links_) bpf_link__destroy(l);
    links_.clear();
    if (skel_) audit_bpf__destroy(skel_);
    if (fe_) audit_fentry_bpf__destroy(fe_);
    skel_ = nullptr;
    fe_ = nullptr;
    obj_ = nullptr;
  }

  std::string family_;
  audit_bpf *skel_ = nullptr;          // the tracepoint family, or
  audit_fentry_bpf *fe_ = nullptr;     // the fentry family
  bpf_object *obj_ = nullptr;          // whichever is open
  bpf_map *events_ = nullptr, *weavers_ = nullptr, *lost_ = nullptr, *sensitive_ = nullptr;
  ring_buffer *rb_ = nullptr;
  std::vector<bpf_link *> links_;
  std::vector<std::string> skipped_;
  std::thread thread_;
  std::atomic<bool> running_{false};
  bool paused_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string batch_;
  Napi::ThreadSafeFunction tsfn_;
  uint32_t ring_bytes_ = 0;
  volatile unsigned long *cons_pos_ = nullptr;
  volatile unsigned long *prod_pos_ = nullptr;
};

// probeFamilies() → { tracepoint: true, fentry: bool|string, lsm: bool|string } (string = why not)
Napi::Value ProbeFamilies(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  libbpf_set_print(silent_print);
  Napi::Object out = Napi::Object::New(env);
  const char *names[] = {"probe_fentry", "probe_lsm"};
  const char *keys[] = {"fentry", "lsm"};
  for (int i = 0; i < 2; i++) {
    probe_bpf *p = probe_bpf__open();
    if (!p) {
      out.Set(keys[i], "open failed");
      continue;
    }
    bpf_program *prog;
    bpf_object__for_each_program(prog, p->obj) bpf_program__set_autoload(prog, strcmp(bpf_program__name(prog), names[i]) == 0);
    int err = probe_bpf__load(p);
    if (err) out.Set(keys[i], errstr(err));
    else out.Set(keys[i], true);
    probe_bpf__destroy(p);
  }
  out.Set("tracepoint", true);
  return out;
}

// clocks() → [boottime ns, realtime ns] read back to back, to place kernel timestamps on the wall clock
Napi::Value Clocks(const Napi::CallbackInfo &info) {
  struct timespec b, r;
  clock_gettime(CLOCK_BOOTTIME, &b);
  clock_gettime(CLOCK_REALTIME, &r);
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::BigInt::New(info.Env(), static_cast<uint64_t>(b.tv_sec) * UINT64_C(1000000000) + static_cast<uint64_t>(b.tv_nsec)));
  out.Set(1u, Napi::BigInt::New(info.Env(), static_cast<uint64_t>(r.tv_sec) * UINT64_C(1000000000) + static_cast<uint64_t>(r.tv_nsec)));
  return out;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("AuditBpf", Audit::Define(env));
  exports.Set("clocks", Napi::Function::New(env, Clocks, "clocks"));
  exports.Set("probeFamilies", Napi::Function::New(env, ProbeFamilies, "probeFamilies"));
  return exports;
}

NODE_API_MODULE(loom_audit, Init)
