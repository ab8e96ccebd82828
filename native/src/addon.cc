// Module entry point. Each concern registers its own exports.
#include <napi.h>

#include "fsops.h"
#include "hash.h"
#include "lock.h"
#include "memfd.h"
#include "platform.h"
#include "prefetch.h"
#include "safeio.h"

namespace {

// Bumped whenever the exported surface changes; the loader refuses a binary whose ABI
// differs (a stale local build from an older checkout) instead of crashing on a missing
// function later.
// 2: identity, readFileBounded; Lock(path, exclusive, under?) opens without following
//    symlinks; every file read refuses symlinks and anything but a regular file.
// 3: readFileBounded's bytes reach Bare < 1.33 intact (a binary of ABI 2 hands Bare 1.31
//    zeros, see safeio.cc): refusing it turns that silent failure into a rebuild message.
// 4: MemoryFile (memfd for the engine's in-memory state handoff), memoryFileSupported.
// 5: MemoryFile.gather (a state joined from chunk files in one call), MemoryFile.readRanges,
//    touchFiles.
// 6: MemoryFile.gather's runs are 7-tuples with a count and two strides (a transposed V's rows
//    of one chunk in one run, instead of one run per element row).
constexpr int kKvkeepNativeAbi = 6;

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abi", Napi::Number::New(env, kKvkeepNativeAbi));
  kvkeep::InitLock(env, exports);
  kvkeep::InitFsOps(env, exports);
  kvkeep::InitPrefetch(env, exports);
  kvkeep::InitHash(env, exports);
  kvkeep::InitSafeIo(env, exports);
  kvkeep::InitPlatform(env, exports);
  kvkeep::InitMemFd(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(kvkeep, Init)
