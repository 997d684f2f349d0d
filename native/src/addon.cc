#include <napi.h>

#include "copy_addon.h"
#include "fsinfo.h"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("fsInfo", Napi::Function::New(env, FsInfo, "fsInfo"));
  RegisterCopy(env, exports);
  return exports;
}

NODE_API_MODULE(loom_native, Init)
