#pragma once
#include <napi.h>

// Filesystem facts the copy primitive and the rootfs materializer choose their strategy by.
Napi::Value FsInfo(const Napi::CallbackInfo& info);
