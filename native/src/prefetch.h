#pragma once

#include <napi.h>

namespace kvkeep {

// Exports prefetch and dropFromPageCache (promise-returning, threadpool).
void InitPrefetch(Napi::Env env, Napi::Object exports);

}  // namespace kvkeep
