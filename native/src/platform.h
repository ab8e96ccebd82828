// What a runtime without Node's fs needs from the addon (Bare: see src/platform/bare/).
#pragma once

#include <napi.h>

namespace kvkeep {

void InitPlatform(Napi::Env env, Napi::Object exports);

}  // namespace kvkeep
