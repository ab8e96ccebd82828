#pragma once

#include <napi.h>

namespace kvkeep {

// Exports the `Lock` class (advisory whole-file lock on a lock file).
void InitLock(Napi::Env env, Napi::Object exports);

}  // namespace kvkeep
