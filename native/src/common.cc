#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <exception>

namespace kvkeep {

const char* ErrnoName(int err) {
  switch (err) {
#define KVKEEP_ERRNO(name) \
  case name:               \
    return #name;
    KVKEEP_ERRNO(EPERM)
    KVKEEP_ERRNO(ENOENT)
    KVKEEP_ERRNO(EINTR)
    KVKEEP_ERRNO(EIO)
    KVKEEP_ERRNO(EBADF)
    KVKEEP_ERRNO(EAGAIN)
    KVKEEP_ERRNO(ENOMEM)
    KVKEEP_ERRNO(EACCES)
    KVKEEP_ERRNO(EBUSY)
    KVKEEP_ERRNO(EEXIST)
    KVKEEP_ERRNO(EXDEV)
    KVKEEP_ERRNO(ENOTDIR)
    KVKEEP_ERRNO(EISDIR)
    KVKEEP_ERRNO(EINVAL)
    KVKEEP_ERRNO(ENFILE)
    KVKEEP_ERRNO(EMFILE)
    KVKEEP_ERRNO(ETXTBSY)
    KVKEEP_ERRNO(EFBIG)
    KVKEEP_ERRNO(ENOSPC)
    KVKEEP_ERRNO(ESPIPE)
    KVKEEP_ERRNO(EROFS)
    KVKEEP_ERRNO(EMLINK)
    KVKEEP_ERRNO(ENAMETOOLONG)
    KVKEEP_ERRNO(ENOLCK)
    KVKEEP_ERRNO(ENOSYS)
    KVKEEP_ERRNO(ENOTEMPTY)
    KVKEEP_ERRNO(ELOOP)
    KVKEEP_ERRNO(EOVERFLOW)
    KVKEEP_ERRNO(EOPNOTSUPP)
    KVKEEP_ERRNO(EDQUOT)
    KVKEEP_ERRNO(ESTALE)
#undef KVKEEP_ERRNO
    default:
      return "UNKNOWN";
  }
}

Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& path,
                        const std::string& dest) {
  std::string message = std::string(ErrnoName(err)) + ": " + std::strerror(err) + ", " + syscall +
                        " '" + path + "'";
  if (!dest.empty()) message += " -> '" + dest + "'";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, ErrnoName(err)));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  error.Set("path", Napi::String::New(env, path));
  if (!dest.empty()) error.Set("dest", Napi::String::New(env, dest));
  return error;
}

void PromiseWorker::Execute() {
  // An escaping C++ exception on a threadpool thread would terminate the process.
  try {
    Work();
  } catch (const std::exception& e) {
    SetError(e.what());
  } catch (...) {
    SetError("unknown native error");
  }
}

void PromiseWorker::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  if (failure_.failed()) {
    deferred_.Reject(SystemError(env, failure_.err, failure_.syscall, failure_.path, failure_.dest).Value());
  } else {
    deferred_.Resolve(Result(env));
  }
}

void PromiseWorker::OnError(const Napi::Error& error) {
  Napi::HandleScope scope(Env());
  deferred_.Reject(error.Value());
}

std::string StringArg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  }
  std::string value = info[index].As<Napi::String>().Utf8Value();
  if (value.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must not contain NUL");
  }
  return value;
}

int OpenRetry(const char* path, int flags, int mode) {
  int fd;
  do {
    fd = ::open(path, flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

void CloseFd(int fd) {
  if (fd >= 0) ::close(fd);
}

}  // namespace kvkeep
