// Shared helpers: system-error objects shaped like Node's fs errors, and a base class
// for promise-returning work that runs on the libuv threadpool.
#pragma once

#include <napi.h>

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
// close(2) that ignores EINTR (on Linux the fd is gone either way).
void CloseFd(int fd);

}  // namespace kvkeep
