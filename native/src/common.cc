#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>

namespace kvkeep {

const char* ErrnoName(int err) {
  if (err == kErrNotRegular) return "ENOTREG";
  if (err == kErrWrongSize) return "EWRONGSIZE";
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
  const char* text = err == kErrNotRegular ? "not a regular file" : err == kErrWrongSize ? "not the expected size" : std::strerror(err);
  std::string message = std::string(ErrnoName(err)) + ": " + text + ", " + syscall + " '" + path + "'";
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

int OpenAtRetry(int dirfd, const char* path, int flags, int mode) {
  int fd;
  do {
    fd = ::openat(dirfd, path, flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

void CloseFd(int fd) {
  if (fd >= 0) ::close(fd);
}

int SafeReadFlags() { return O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY; }

int OpenRegularFile(int dirfd, const char* path, int extra, struct stat* st) {
  const int fd = OpenAtRetry(dirfd, path, SafeReadFlags() | extra);
  if (fd < 0) return -1;
  if (::fstat(fd, st) != 0) {
    const int err = errno;
    CloseFd(fd);
    errno = err;
    return -1;
  }
  if (!S_ISREG(st->st_mode)) {
    CloseFd(fd);
    errno = kErrNotRegular;
    return -1;
  }
  return fd;
}

namespace {

const char* FileTypeName(mode_t mode) {
  if (S_ISREG(mode)) return "file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISLNK(mode)) return "symlink";
  if (S_ISFIFO(mode)) return "fifo";
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISCHR(mode)) return "char-device";
  if (S_ISBLK(mode)) return "block-device";
  return "unknown";
}

}  // namespace

Napi::Object IdentityObject(Napi::Env env, const struct stat& st) {
#if defined(__APPLE__)
  const struct timespec mtime = st.st_mtimespec;
#else
  const struct timespec mtime = st.st_mtim;
#endif
  // sec * 1e9 + nsec, as Node's bigint stat computes mtimeNs (times before 1970 are not ours).
  const unsigned __int128 ns = static_cast<unsigned __int128>(mtime.tv_sec < 0 ? 0 : mtime.tv_sec) * 1000000000u +
                               static_cast<unsigned __int128>(mtime.tv_nsec);
  char digits[48];
  size_t n = 0;
  unsigned __int128 rest = ns;
  do {
    digits[n++] = static_cast<char>('0' + static_cast<int>(rest % 10));
    rest /= 10;
  } while (rest != 0);
  std::string mtime_ns(digits, n);
  std::reverse(mtime_ns.begin(), mtime_ns.end());

  Napi::Object out = Napi::Object::New(env);
  out.Set("type", Napi::String::New(env, FileTypeName(st.st_mode)));
  out.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  out.Set("ino", Napi::String::New(env, std::to_string(static_cast<unsigned long long>(st.st_ino))));
  out.Set("mtimeNs", Napi::String::New(env, mtime_ns));
  return out;
}

}  // namespace kvkeep
