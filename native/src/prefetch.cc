// Page-cache hints, used to warm a cache file before the engine loads it and to stop
// evicted/idle caches from crowding out hot ones.
#include "prefetch.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace kvkeep {
namespace {

#if defined(POSIX_FADV_WILLNEED)
// Linux clamps one WILLNEED (and readahead(2), which is the same code path) to
// max(read_ahead_kb, max_sectors_kb) of the device — measured: one call on a 64 MiB file
// cached only the first 8 MiB. So we advise the file in slices no larger than the
// smallest default readahead window (128 KiB). Each call only queues I/O, so even a
// multi-GiB file is a few thousand cheap syscalls on this worker thread.
constexpr off_t kWillNeedSlice = 128 * 1024;
#endif

class PrefetchWorker : public PromiseWorker {
 public:
  PrefetchWorker(Napi::Env env, std::string path, bool drop)
      : PromiseWorker(env, drop ? "kvkeep:dropFromPageCache" : "kvkeep:prefetch"),
        path_(std::move(path)),
        drop_(drop) {}

 protected:
  void Work() override {
    struct stat st;
    const int fd = OpenRegularFile(AT_FDCWD, path_.c_str(), 0, &st);
    if (fd < 0) {
      failure_.Set(errno, "open", path_);
      return;
    }
    if (drop_) {
      Drop(fd);
    } else {
      WillNeed(fd, st);
    }
    CloseFd(fd);
  }

 private:
  void Drop(int fd) {
#if defined(POSIX_FADV_DONTNEED)
    // Drops clean pages only; dirty pages stay until written back (callers fsync first
    // if they want the drop to be complete). posix_fadvise returns the error, not errno.
    const int rc = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (rc != 0 && rc != ESPIPE && rc != EINVAL) failure_.Set(rc, "posix_fadvise", path_);
#else
    (void)fd;  // no portable way to drop pages; a hint may be ignored
#endif
  }

  void WillNeed(int fd, const struct stat& st) {
#if defined(POSIX_FADV_WILLNEED)
    for (off_t offset = 0; offset < st.st_size; offset += kWillNeedSlice) {
      const int rc = ::posix_fadvise(fd, offset, kWillNeedSlice, POSIX_FADV_WILLNEED);
      if (rc == ESPIPE || rc == EINVAL) break;  // not a regular file, or no page cache: a no-op
      if (rc != 0) {
        failure_.Set(rc, "posix_fadvise", path_);
        return;
      }
    }
#else
    (void)st;
    // No advice API (e.g. macOS): read the file through once, like the JS fallback.
    std::vector<char> buffer(1 << 20);
    for (;;) {
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        failure_.Set(errno, "read", path_);
        return;
      }
    }
#endif
  }

  std::string path_;
  bool drop_;
};

Napi::Value Prefetch(const Napi::CallbackInfo& info) {
  auto* worker = new PrefetchWorker(info.Env(), StringArg(info, 0, "path"), false);
  worker->Queue();
  return worker->Promise();
}

Napi::Value DropFromPageCache(const Napi::CallbackInfo& info) {
  auto* worker = new PrefetchWorker(info.Env(), StringArg(info, 0, "path"), true);
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitPrefetch(Napi::Env env, Napi::Object exports) {
  exports.Set("prefetch", Napi::Function::New<Prefetch>(env, "prefetch"));
  exports.Set("dropFromPageCache", Napi::Function::New<DropFromPageCache>(env, "dropFromPageCache"));
}

}  // namespace kvkeep
