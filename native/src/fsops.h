#pragma once

#include <napi.h>

namespace kvkeep {

// Exports fsyncFile, fsyncDir, renameNoReplace (all promise-returning, threadpool).
void InitFsOps(Napi::Env env, Napi::Object exports);

}  // namespace kvkeep
