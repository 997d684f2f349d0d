#pragma once
#include <napi.h>

// Adds copyTree, removeTree, createSubvolume, isSubvolume to the addon's exports.
void RegisterCopy(Napi::Env env, Napi::Object exports);
