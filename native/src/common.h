// Shared helpers: system-error objects shaped like Node's fs errors, and a base class
// for promise-returning work that runs on the libuv threadpool.
#pragma once

#include <napi.h>

#include <sys/stat.h>

#include <string>

namespace kvkeep {

// "ENOENT", "EEXIST", ... (the names Node uses for err.code), or "UNKNOWN".
const char* ErrnoName(int err);

// An Error like Node's fs errors: message "ENOENT: no such file or directory, open '/x'",
// properties code, errno (negative, as in Node), syscall, path and (optionally) dest.
// The TypeScript loader maps these onto KvKeepError codes.
Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& path,
                        const std::string& dest = std::string());

// The system error a worker recorded on its thread, to be turned into a JS error on the
// main thread (strerror and Napi calls belong there).
struct SysFailure {
  int err = 0;
  const char* syscall = "";
  std::string path;
  std::string dest;

  void Set(int e, const char* call, const std::string& p, const std::string& d = std::string()) {
    err = e;
    syscall = call;
    path = p;
    dest = d;
  }
  bool failed() const { return err != 0; }
};

// Runs Work() on the threadpool and settles a promise on the main thread.
// Work() must not touch Napi; it records a failure in failure_ or sets its result fields.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  virtual void Work() = 0;
  // The resolution value; undefined by default.
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }

  SysFailure failure_;

 private:
  void Execute() final;
  void OnOK() final;
  void OnError(const Napi::Error& error) final;

  Napi::Promise::Deferred deferred_;
};

// Argument helpers for the exported functions; they throw a TypeError on misuse.
std::string StringArg(const Napi::CallbackInfo& info, size_t index, const char* name);

// open(2) retried on EINTR.
int OpenRetry(const char* path, int flags, int mode = 0);
// openat(2) retried on EINTR.
int OpenAtRetry(int dirfd, const char* path, int flags, int mode = 0);
// close(2) that ignores EINTR (on Linux the fd is gone either way).
void CloseFd(int fd);

// A pseudo errno for "the path names something other than a regular file" (a FIFO, a
// device, a directory, a socket). Reported with code "ENOTREG".
constexpr int kErrNotRegular = 1 << 20;
// A pseudo errno for "the file is not the size it must be" (a torn or foreign piece). Code "EWRONGSIZE".
constexpr int kErrWrongSize = 1 << 21;

// Flags for opening a file kvkeep reads: never through a symlink at the last component
// (ELOOP), never blocking (a FIFO opens at once instead of waiting for a writer, a device
// without a carrier does not hang), no controlling terminal.
int SafeReadFlags();

// Opens `path` (relative to `dirfd`, or AT_FDCWD) with SafeReadFlags() | `extra` and checks
// with fstat on the descriptor that it is a regular file. Returns the fd (and fills `st`),
// or -1 with errno set (kErrNotRegular for anything that is not a regular file).
int OpenRegularFile(int dirfd, const char* path, int extra, struct stat* st);

// The identity of a file as kvkeep compares it — type, size, inode, mtime in ns — as
// { type, size, ino, mtimeNs } (ino and mtimeNs as decimal strings, like Node's bigint stat).
Napi::Object IdentityObject(Napi::Env env, const struct stat& st);

}  // namespace kvkeep
