// Platform primitives for runtimes whose fs module lacks them (Bare's bare-fs has no
// O_EXCL/O_NOFOLLOW/O_NONBLOCK constants — they silently become 0 — no nanosecond stat and
// no random bytes). src/platform/bare/ builds node:fs and node:crypto on top of these.
//
//   platformConstants            open(2) flags of this platform, for bare-fs's open()
//   statNs(path, follow)         Promise<string[13]>: stat/lstat fields as decimal strings
//   fstatNs(fd)                  Promise<string[13]>: the same for an open descriptor
//   randomFill(bytes)            fills a Uint8Array from the OS's CSPRNG
//   monotonicMs()                CLOCK_MONOTONIC in milliseconds (Bare has no performance.now)
//
// The stat fields are exact 64-bit values (Node's BigIntStats): dev, ino, mode, nlink, uid,
// gid, rdev, size, blksize, blocks, atimeNs, mtimeNs, ctimeNs.
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/random.h>
#endif
#if defined(__APPLE__)
#include <stdlib.h>
#endif

#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include "common.h"

namespace kvkeep {
namespace {

#if defined(__APPLE__)
#define KVKEEP_ST_ATIM st_atimespec
#define KVKEEP_ST_MTIM st_mtimespec
#define KVKEEP_ST_CTIM st_ctimespec
#else
#define KVKEEP_ST_ATIM st_atim
#define KVKEEP_ST_MTIM st_mtim
#define KVKEEP_ST_CTIM st_ctim
#endif

constexpr size_t kStatFields = 13;
using StatFields = std::array<std::string, kStatFields>;

std::string Ns(const struct timespec& ts) {
  // Signed: a time before 1970 is negative, as in Node's BigIntStats.
  const __int128 ns = static_cast<__int128>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  if (ns >= 0) return std::to_string(static_cast<uint64_t>(ns));
  return "-" + std::to_string(static_cast<uint64_t>(-ns));
}

StatFields Fields(const struct stat& st) {
  return {std::to_string(static_cast<uint64_t>(st.st_dev)),
          std::to_string(static_cast<uint64_t>(st.st_ino)),
          std::to_string(static_cast<uint64_t>(st.st_mode)),
          std::to_string(static_cast<uint64_t>(st.st_nlink)),
          std::to_string(static_cast<uint64_t>(st.st_uid)),
          std::to_string(static_cast<uint64_t>(st.st_gid)),
          std::to_string(static_cast<uint64_t>(st.st_rdev)),
          std::to_string(static_cast<int64_t>(st.st_size)),
          std::to_string(static_cast<int64_t>(st.st_blksize)),
          std::to_string(static_cast<int64_t>(st.st_blocks)),
          Ns(st.KVKEEP_ST_ATIM),
          Ns(st.KVKEEP_ST_MTIM),
          Ns(st.KVKEEP_ST_CTIM)};
}

class StatWorker : public PromiseWorker {
 public:
  // By path (follow selects stat or lstat), or by descriptor when fd >= 0.
  StatWorker(Napi::Env env, std::string path, bool follow, int fd)
      : PromiseWorker(env, "kvkeep:statNs"), path_(std::move(path)), follow_(follow), fd_(fd) {}

 protected:
  void Work() override {
    struct stat st;
    int rc;
    const char* call;
    if (fd_ >= 0) {
      call = "fstat";
      rc = ::fstat(fd_, &st);
    } else if (follow_) {
      call = "stat";
      rc = ::stat(path_.c_str(), &st);
    } else {
      call = "lstat";
      rc = ::lstat(path_.c_str(), &st);
    }
    if (rc != 0) {
      failure_.Set(errno, call, fd_ >= 0 ? std::string("fd ") + std::to_string(fd_) : path_);
      return;
    }
    fields_ = Fields(st);
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Array out = Napi::Array::New(env, kStatFields);
    for (size_t i = 0; i < kStatFields; i++) out.Set(static_cast<uint32_t>(i), Napi::String::New(env, fields_[i]));
    return out;
  }

 private:
  std::string path_;
  bool follow_;
  int fd_;
  StatFields fields_;
};

Napi::Value StatNs(const Napi::CallbackInfo& info) {
  std::string path = StringArg(info, 0, "path");
  const bool follow = info.Length() < 2 || info[1].ToBoolean().Value();
  auto* worker = new StatWorker(info.Env(), std::move(path), follow, -1);
  worker->Queue();
  return worker->Promise();
}

Napi::Value FstatNs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  const int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(info.Env(), "fd must be a non-negative integer");
  auto* worker = new StatWorker(info.Env(), std::string(), true, fd);
  worker->Queue();
  return worker->Promise();
}

Napi::Value RandomFill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "bytes must be a Uint8Array");
  Napi::TypedArray array = info[0].As<Napi::TypedArray>();
  if (array.TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, "bytes must be a Uint8Array");
  Napi::Uint8Array bytes = array.As<Napi::Uint8Array>();
  uint8_t* data = bytes.Data();
  size_t left = bytes.ByteLength();
#if defined(__APPLE__)
  arc4random_buf(data, left);
#else
  while (left > 0) {
    const ssize_t got = ::getrandom(data, left, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw SystemError(env, errno, "getrandom", "");
    }
    data += got;
    left -= static_cast<size_t>(got);
  }
#endif
  return info[0];
}

Napi::Value MonotonicMs(const Napi::CallbackInfo& info) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return Napi::Number::New(info.Env(), static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6);
}

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  c.Set("O_EXCL", Napi::Number::New(env, O_EXCL));
  c.Set("O_NOFOLLOW", Napi::Number::New(env, O_NOFOLLOW));
  c.Set("O_NONBLOCK", Napi::Number::New(env, O_NONBLOCK));
  c.Set("O_NOCTTY", Napi::Number::New(env, O_NOCTTY));
  c.Set("O_CLOEXEC", Napi::Number::New(env, O_CLOEXEC));
  c.Set("O_DIRECTORY", Napi::Number::New(env, O_DIRECTORY));
  c.Set("O_SYNC", Napi::Number::New(env, O_SYNC));
#if defined(O_DSYNC)
  c.Set("O_DSYNC", Napi::Number::New(env, O_DSYNC));
#endif
  c.Freeze();
  return c;
}

}  // namespace

void InitPlatform(Napi::Env env, Napi::Object exports) {
  exports.Set("platformConstants", Constants(env));
  exports.Set("statNs", Napi::Function::New(env, StatNs, "statNs"));
  exports.Set("fstatNs", Napi::Function::New(env, FstatNs, "fstatNs"));
  exports.Set("randomFill", Napi::Function::New(env, RandomFill, "randomFill"));
  exports.Set("monotonicMs", Napi::Function::New(env, MonotonicMs, "monotonicMs"));
}

}  // namespace kvkeep
