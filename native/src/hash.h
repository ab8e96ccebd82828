#pragma once

#include <napi.h>

namespace kvkeep {

// Exports xxh64File (threadpool, promise) and xxh64 (synchronous, for small buffers).
void InitHash(Napi::Env env, Napi::Object exports);

}  // namespace kvkeep
