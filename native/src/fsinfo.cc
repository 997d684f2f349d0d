#include "fsinfo.h"

#include <cerrno>
#include <cstring>
#include <string>
#include <sys/statfs.h>

namespace {
const char* FsName(long magic) {
  switch (static_cast<unsigned long>(magic)) {
    case 0x9123683EUL: return "btrfs";
    case 0x58465342UL: return "xfs";
    case 0xEF53UL: return "ext4";
    case 0x01021994UL: return "tmpfs";
    case 0x794C7630UL: return "overlayfs";
    default: return "other";
  }
}
}  // namespace

// fsInfo(path) -> { type: "btrfs"|"xfs"|"ext4"|"tmpfs"|"overlayfs"|"other", magic: number }
Napi::Value FsInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "fsInfo(path): path must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  struct statfs st {};
  if (statfs(path.c_str(), &st) != 0) {
    int err = errno;
    Napi::Error e = Napi::Error::New(env, std::string("statfs ") + path + ": " + strerror(err));
    e.Set("errno", Napi::Number::New(env, err));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("type", FsName(st.f_type));
  out.Set("magic", Napi::Number::New(env, static_cast<double>(static_cast<unsigned long>(st.f_type))));
  return out;
}
