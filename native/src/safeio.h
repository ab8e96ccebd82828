#pragma once

#include <napi.h>

namespace kvkeep {

// Exports identity and readFileBounded (promise-returning, threadpool): file identity from
// lstat, and bounded reads that never follow a symlink, never block and only read regular
// files. The Bare/QVAC port relies on these (bare-fs has neither bigint stat nor O_NOFOLLOW).
void InitSafeIo(Napi::Env env, Napi::Object exports);

}  // namespace kvkeep
