#pragma once
#include <napi.h>
Napi::Value MakePipe(const Napi::CallbackInfo &info);
