#pragma once

#include <napi.h>

namespace kvkeep {

// Exports MemoryFile (an anonymous in-memory file: Linux memfd_create) and memoryFileSupported.
void InitMemFd(Napi::Env env, Napi::Object exports);

}  // namespace kvkeep
