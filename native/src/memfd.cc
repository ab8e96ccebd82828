// Anonymous in-memory files, for handing a sequence state to the engine and back without
// writing it to the disk: the engine (llama.cpp) only takes a *path*, so kvkeep creates a
// memfd and hands it `/proc/self/fd/<fd>`. Opening that magic link opens the memfd itself (a
// new open file description on the same memory, with its own offset), so llama.cpp's
// fopen(path, "wb") truncates and fills it, and fopen(path, "rb") reads what kvkeep wrote.
//
//   new MemoryFile(name)   memfd_create(name, MFD_CLOEXEC); throws a system error (ENOSYS
//                          where there is no memfd, or when /proc/self/fd/<fd> does not name
//                          it — no /proc mounted)
//   .fd, .path             the descriptor (-1 once closed) and /proc/self/fd/<fd>
//   .size()                fstat size
//   .read(into?)           Promise<Uint8Array>: every byte, pread from 0 on a threadpool thread,
//                          into `into` when it is large enough (a view of it is resolved)
//   .write(parts)          Promise<void>: the file becomes the concatenation of `parts`
//                          (Uint8Arrays): ftruncate, then pwritev — a gather write, so a state
//                          assembled from chunk slices is never concatenated in JS first
//   .close()               idempotent; while a read or write is in flight it is deferred to
//                          its end (the fd number is never closed under a worker, where it
//                          could be reused by an unrelated open)
//   memoryFileSupported    whether this build has memfd_create at all (Linux)
//
// Why no sealing: a memfd made without MFD_ALLOW_SEALING is born with F_SEAL_SEAL, so no
// one can seal it later (an F_SEAL_WRITE/SHRINK would make the engine's O_TRUNC open fail
// with EPERM). Memory: the pages are shmem charged to this process's memory cgroup, not
// bounded by /dev/shm's size; writes are bounded by RLIMIT_FSIZE (EFBIG) and memory
// (ENOSPC/ENOMEM). A MemoryFile dropped by JS without close() has its fd closed when it is
// garbage-collected, so a leak cannot pin a state's worth of RAM forever.
#include "memfd.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <limits.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#endif

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

#if defined(__linux__) && !defined(MFD_CLOEXEC)
#define MFD_CLOEXEC 0x0001U
#endif

namespace kvkeep {
namespace {

#if defined(__linux__) && defined(SYS_memfd_create)
constexpr bool kSupported = true;
#else
constexpr bool kSupported = false;
#endif

// memfd_create's limit on the name (the kernel prefixes "memfd:" within 255 bytes).
constexpr size_t kMaxNameBytes = 249;

class MemoryFile : public Napi::ObjectWrap<MemoryFile> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "MemoryFile",
                       {
                           InstanceAccessor<&MemoryFile::FdGetter>("fd"),
                           InstanceAccessor<&MemoryFile::PathGetter>("path"),
                           InstanceMethod<&MemoryFile::Size>("size"),
                           InstanceMethod<&MemoryFile::Read>("read"),
                           InstanceMethod<&MemoryFile::Write>("write"),
                           InstanceMethod<&MemoryFile::Close>("close"),
                       });
  }

  explicit MemoryFile(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MemoryFile>(info) {
    Napi::Env env = info.Env();
    name_ = StringArg(info, 0, "name");
    if (name_.size() > kMaxNameBytes) throw Napi::RangeError::New(env, "name must be at most 249 bytes");
    label_ = "memfd:" + name_;
#if defined(__linux__) && defined(SYS_memfd_create)
    int fd;
    do {
      fd = static_cast<int>(::syscall(SYS_memfd_create, name_.c_str(), MFD_CLOEXEC));
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      const int err = errno;
      throw SystemError(env, err, "memfd_create", label_);
    }
    // The engine opens the magic link, not the fd: check it names this very file (no /proc
    // mounted, or a /proc that is not this process's, would send the engine elsewhere).
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    struct stat by_fd, by_path;
    int err = 0;
    if (::fstat(fd, &by_fd) != 0 || ::stat(path.c_str(), &by_path) != 0) {
      err = errno;
    } else if (by_fd.st_dev != by_path.st_dev || by_fd.st_ino != by_path.st_ino) {
      err = ENOENT;
    }
    if (err != 0) {
      CloseFd(fd);
      throw SystemError(env, err, "stat", path);
    }
    fd_ = fd;
    path_ = path;
#else
    throw SystemError(env, ENOSYS, "memfd_create", label_);
#endif
  }

  // Dropped by JS without close(): free the memory with the fd. A worker in flight holds a
  // reference to this object, so this never runs under one.
  ~MemoryFile() override { CloseFd(fd_); }

  int fd() const { return fd_; }
  const std::string& label() const { return label_; }

  void BeginOp() { ++pending_; }
  void EndOp() {
    if (--pending_ == 0 && close_requested_) CloseNow();
  }

 private:
  Napi::Value FdGetter(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), Usable() ? fd_ : -1); }
  Napi::Value PathGetter(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), path_); }

  bool Usable() const { return fd_ >= 0 && !close_requested_; }

  void CheckUsable(Napi::Env env, const char* syscall) const {
    if (!Usable()) throw SystemError(env, EBADF, syscall, label_);
  }

  Napi::Value Size(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);

  void Close(const Napi::CallbackInfo&) {
    if (pending_ > 0) {
      close_requested_ = true;
    } else {
      CloseNow();
    }
  }

  void CloseNow() {
    CloseFd(fd_);
    fd_ = -1;
    close_requested_ = true;  // stays closed: fd and path report so
  }

  std::string name_;
  std::string label_;
  std::string path_;
  int fd_ = -1;
  int pending_ = 0;
  bool close_requested_ = false;
};

// A read or write on a MemoryFile: holds the JS object (so it is not collected, and its fd
// not closed, while the work runs) and counts itself in flight.
class MemoryFileWorker : public PromiseWorker {
 public:
  MemoryFileWorker(Napi::Env env, const char* name, MemoryFile* file, Napi::Object self)
      : PromiseWorker(env, name), file_(file), self_(Napi::Persistent(self)), fd_(file->fd()), label_(file->label()) {
    file_->BeginOp();
  }
  // Runs on the main thread once the promise is settled.
  ~MemoryFileWorker() override { file_->EndOp(); }

 protected:
  MemoryFile* file_;
  Napi::ObjectReference self_;
  int fd_;
  std::string label_;
};

class ReadWorker : public MemoryFileWorker {
 public:
  // Fills `target` (its first `size` bytes) when given, else a new Buffer of `size` bytes, both
  // referenced from here (main thread) until the read ends: no second copy of a state-sized
  // buffer, and a caller reading every turn can reuse one buffer (a fresh multi-MB allocation
  // can cost more in page faults than the copy itself).
  ReadWorker(Napi::Env env, MemoryFile* file, Napi::Object self, size_t size, Napi::Uint8Array target)
      : MemoryFileWorker(env, "kvkeep:memoryFileRead", file, self) {
    size_ = size;
    if (target.IsEmpty()) {
      Napi::Buffer<uint8_t> buffer = Napi::Buffer<uint8_t>::New(env, size);
      data_ = buffer.Data();
      fresh_ = true;
      target_ = Napi::Persistent(buffer.As<Napi::Uint8Array>());
    } else {
      data_ = target.Data();
      target_ = Napi::Persistent(target);
    }
  }

 protected:
  void Work() override {
#if defined(__linux__)
    size_t got = 0;
    while (got < size_) {
      const ssize_t n = ::pread(fd_, data_ + got, size_ - got, static_cast<off_t>(got));
      if (n < 0) {
        if (errno == EINTR) continue;
        failure_.Set(errno, "pread", label_);
        return;
      }
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    uint8_t extra;
    ssize_t more;
    do {
      more = ::pread(fd_, &extra, 1, static_cast<off_t>(got));
    } while (more < 0 && errno == EINTR);
    // Nothing else writes to a memory file kvkeep owns while it reads it: a size change means
    // someone does (an engine still saving), and the bytes are not one state.
    if (got != size_ || more != 0) SetError("kvkeep: the memory file changed size while it was being read");
#endif
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Uint8Array target = target_.Value();
    if (fresh_) return target;
    // A view of the caller's buffer, exactly as long as what was read.
    return Napi::Uint8Array::New(env, size_, target.ArrayBuffer(), target.ByteOffset());
  }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool fresh_ = false;
  Napi::Reference<Napi::Uint8Array> target_;
};

class WriteWorker : public MemoryFileWorker {
 public:
  struct Piece {
    const uint8_t* data;
    size_t size;
  };

  // `parts` (checked by the caller to be Uint8Arrays) stays referenced until the write ends;
  // its arrays must not change meanwhile.
  WriteWorker(Napi::Env env, MemoryFile* file, Napi::Object self, Napi::Array parts, std::vector<Piece> pieces, size_t total)
      : MemoryFileWorker(env, "kvkeep:memoryFileWrite", file, self),
        parts_(Napi::Persistent(parts.As<Napi::Object>())),
        pieces_(std::move(pieces)),
        total_(total) {}

 protected:
  void Work() override {
#if defined(__linux__)
    int rc;
    do {
      rc = ::ftruncate(fd_, static_cast<off_t>(total_));
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      failure_.Set(errno, "ftruncate", label_);
      return;
    }
    std::vector<struct iovec> iov;
    iov.reserve(std::min<size_t>(pieces_.size(), IOV_MAX));
    size_t index = 0;      // first piece not fully written
    size_t skip = 0;       // bytes of it already written
    size_t offset = 0;     // file offset
    while (index < pieces_.size()) {
      iov.clear();
      for (size_t i = index; i < pieces_.size() && iov.size() < IOV_MAX; ++i) {
        const size_t from = i == index ? skip : 0;
        iov.push_back({const_cast<uint8_t*>(pieces_[i].data) + from, pieces_[i].size - from});
      }
      const ssize_t n = ::pwritev(fd_, iov.data(), static_cast<int>(iov.size()), static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        failure_.Set(errno, "pwritev", label_);
        return;
      }
      if (n == 0) {
        failure_.Set(EIO, "pwritev", label_);
        return;
      }
      offset += static_cast<size_t>(n);
      size_t left = static_cast<size_t>(n);
      while (left > 0) {
        const size_t rest = pieces_[index].size - skip;
        if (left < rest) {
          skip += left;
          left = 0;
        } else {
          left -= rest;
          ++index;
          skip = 0;
        }
      }
    }
#endif
  }

 private:
  Napi::ObjectReference parts_;
  std::vector<Piece> pieces_;
  size_t total_ = 0;
};

Napi::Value MemoryFile::Size(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckUsable(env, "fstat");
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    throw SystemError(env, err, "fstat", label_);
  }
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

Napi::Value MemoryFile::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckUsable(env, "read");
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    throw SystemError(env, err, "fstat", label_);
  }
  const size_t size = static_cast<size_t>(st.st_size);
  Napi::Uint8Array target;
  if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      throw Napi::TypeError::New(env, "into must be a Uint8Array");
    }
    Napi::Uint8Array given = info[0].As<Napi::Uint8Array>();
    if (given.ByteLength() >= size) target = given;  // else too small: a new buffer
  }
  auto* worker = new ReadWorker(env, this, Value(), size, target);
  worker->Queue();
  return worker->Promise();
}

Napi::Value MemoryFile::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckUsable(env, "write");
  if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "parts must be an array of Uint8Arrays");
  Napi::Array parts = info[0].As<Napi::Array>();
  const uint32_t n = parts.Length();
  std::vector<WriteWorker::Piece> pieces;
  pieces.reserve(n);
  size_t total = 0;
  for (uint32_t i = 0; i < n; ++i) {
    Napi::Value part = parts.Get(i);
    if (!part.IsTypedArray() || part.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      throw Napi::TypeError::New(env, "parts must be an array of Uint8Arrays");
    }
    Napi::Uint8Array bytes = part.As<Napi::Uint8Array>();
    if (bytes.ByteLength() == 0) continue;
    pieces.push_back({bytes.Data(), bytes.ByteLength()});
    total += bytes.ByteLength();
  }
  auto* worker = new WriteWorker(env, this, Value(), parts, std::move(pieces), total);
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitMemFd(Napi::Env env, Napi::Object exports) {
  exports.Set("MemoryFile", MemoryFile::Define(env));
  exports.Set("memoryFileSupported", Napi::Boolean::New(env, kSupported));
}

}  // namespace kvkeep
