// XXH64 of a whole file, computed on a threadpool thread so hashing a multi-GiB cache
// never blocks the event loop.
#include "hash.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "common.h"
#include "xxh64.h"

namespace kvkeep {
namespace {

// Chunk size for read(2): large enough that syscall overhead vanishes, small enough to
// stay cache-resident between the kernel's copy and our hashing. On the 2-core AMD EPYC
// VM this was written on, `npx tsx bench/xxh64.ts --chunks` put 64 KiB-4 MiB within
// noise of each other (~5-6 GB/s hot); 16 MiB was slower. Hot-cache throughput is read
// (~13 GB/s) plus hash (~10.5 GB/s, multiply-bound) done one after the other; a reader
// thread overlapping them could gain up to ~1.7x. mmap would skip the copy, but a file
// truncated by another process while mapped raises SIGBUS and kills the whole process.
constexpr size_t kDefaultChunk = 1 << 20;
constexpr size_t kMaxChunk = 64 << 20;
constexpr size_t kBufferAlign = 4096;

std::string Hex64(uint64_t value) {
  char out[17];
  std::snprintf(out, sizeof out, "%016" PRIx64, value);
  return std::string(out, 16);
}

uint64_t SeedArg(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return 0;
  if (!info[index].IsBigInt()) throw Napi::TypeError::New(info.Env(), "seed must be a bigint");
  bool lossless = false;
  const uint64_t seed = info[index].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(info.Env(), "seed must be a bigint in [0, 2^64)");
  return seed;
}

class HashFileWorker : public PromiseWorker {
 public:
  HashFileWorker(Napi::Env env, std::string path, uint64_t seed, size_t chunk)
      : PromiseWorker(env, "kvkeep:xxh64File"), path_(std::move(path)), seed_(seed), chunk_(chunk) {}

 protected:
  void Work() override {
    // Never through a symlink, never blocking on a FIFO or device, only a regular file.
    struct stat st;
    const int fd = OpenRegularFile(AT_FDCWD, path_.c_str(), 0, &st);
    if (fd < 0) {
      failure_.Set(errno, "open", path_);
      return;
    }
#if defined(POSIX_FADV_SEQUENTIAL)
    // Doubles the kernel's readahead window for this fd: cold files stream faster.
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    // Page-aligned on purpose: the kernel's copy into a buffer whose page offset differs
    // from the page cache's (malloc returns page+16 for big blocks) ran 5x slower on the
    // AMD EPYC we benchmarked on (rep movsb with mismatched alignment): 2.4 vs 13 GB/s.
    void* raw = nullptr;
    if (::posix_memalign(&raw, kBufferAlign, chunk_) != 0) {
      failure_.Set(ENOMEM, "posix_memalign", path_);
      CloseFd(fd);
      return;
    }
    std::unique_ptr<unsigned char, decltype(&std::free)> buffer(static_cast<unsigned char*>(raw), &std::free);
    Xxh64 state(seed_);
    for (;;) {
      const ssize_t n = ::read(fd, buffer.get(), chunk_);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        failure_.Set(errno, "read", path_);
        CloseFd(fd);
        return;
      }
      state.Update(buffer.get(), static_cast<size_t>(n));
    }
    CloseFd(fd);
    digest_ = state.Digest();
  }

  Napi::Value Result(Napi::Env env) override { return Napi::String::New(env, Hex64(digest_)); }

 private:
  std::string path_;
  uint64_t seed_;
  size_t chunk_;
  uint64_t digest_ = 0;
};

// xxh64File(path, seed?: bigint, chunkBytes?: number) → Promise<string> (16 hex chars).
// chunkBytes exists so tests can force reads that split stripes at odd offsets.
Napi::Value Xxh64File(const Napi::CallbackInfo& info) {
  std::string path = StringArg(info, 0, "path");
  const uint64_t seed = SeedArg(info, 1);
  size_t chunk = kDefaultChunk;
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    if (!info[2].IsNumber()) throw Napi::TypeError::New(info.Env(), "chunkBytes must be a number");
    const int64_t requested = info[2].As<Napi::Number>().Int64Value();
    if (requested < 1 || requested > static_cast<int64_t>(kMaxChunk)) {
      throw Napi::RangeError::New(info.Env(), "chunkBytes must be in [1, 64 MiB]");
    }
    chunk = static_cast<size_t>(requested);
  }
  auto* worker = new HashFileWorker(info.Env(), std::move(path), seed, chunk);
  worker->Queue();
  return worker->Promise();
}

// xxh64(bytes: Uint8Array, seed?: bigint) → string. Synchronous: for small inputs.
Napi::Value Xxh64Buffer(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(info.Env(), "bytes must be a Uint8Array");
  }
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  const uint64_t seed = SeedArg(info, 1);
  return Napi::String::New(info.Env(), Hex64(Xxh64::Oneshot(bytes.Data(), bytes.ByteLength(), seed)));
}

}  // namespace

void InitHash(Napi::Env env, Napi::Object exports) {
  exports.Set("xxh64File", Napi::Function::New<Xxh64File>(env, "xxh64File"));
  exports.Set("xxh64", Napi::Function::New<Xxh64Buffer>(env, "xxh64"));
}

}  // namespace kvkeep
