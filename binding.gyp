# node-gyp build of the same sources as native/CMakeLists.txt (Electron rebuild tools
# drive node-gyp). Output: build/Release/kvkeep.node. Run: npm run build:native:gyp
{
  "targets": [
    {
      "target_name": "kvkeep",
      "sources": [
        "native/src/addon.cc",
        "native/src/common.cc",
        "native/src/fsops.cc",
        "native/src/hash.cc",
        "native/src/lock.cc",
        "native/src/memfd.cc",
        "native/src/platform.cc",
        "native/src/prefetch.cc",
        "native/src/safeio.cc",
        "native/src/xxh64.cc"
      ],
      # node_addon_api_except: include path + C++ exceptions on (NAPI_CPP_EXCEPTIONS).
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags!": ["-O3"],
      "cflags_cc": ["-std=c++17", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "cflags_cc!": ["-std=gnu++17", "-std=gnu++14", "-std=gnu++1y"],
      "xcode_settings": {
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "GCC_SYMBOLS_PRIVATE_EXTERN": "YES",
        "MACOSX_DEPLOYMENT_TARGET": "10.15"
      }
    }
  ]
}
