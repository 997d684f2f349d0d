#include <napi.h>

#include "copy_addon.h"
#include "fsinfo.h"
#include "pipe.h"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("fsInfo", Napi::Function::New(env, FsInfo, "fsInfo"));
  RegisterCopy(env, exports);
  exports.Set("pipe", Napi::Function::New(env, MakePipe, "pipe"));
  return exports;
}

NODE_API_MODULE(loom_native, Init)
