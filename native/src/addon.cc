#include <napi.h>

#include "fsinfo.h"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("fsInfo", Napi::Function::New(env, FsInfo, "fsInfo"));
  return exports;
}

NODE_API_MODULE(loom_native, Init)
