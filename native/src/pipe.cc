// pipe(size): a close-on-exec pipe with its kernel buffer grown to `size` bytes (F_SETPIPE_SZ,
// capped by /proc/sys/fs/pipe-max-size for unprivileged users). Node has no pipe() of its own; exec
// output read through a pipe it owns can use a reused read buffer (net.Socket onread) instead of
// allocating 64 KiB per read, which is what made bulk file transfer GC-bound.
#include "pipe.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

Napi::Value MakePipe(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int want = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) {
    Napi::Error::New(env, std::string("pipe2: ") + strerror(errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int size = fcntl(fds[1], F_GETPIPE_SZ);
  if (want > 0) {
    int got = fcntl(fds[1], F_SETPIPE_SZ, want);
    if (got > 0) size = got;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("read", fds[0]);
  out.Set("write", fds[1]);
  out.Set("size", size);
  return out;
}
