// Safe file access for files kvkeep did not necessarily create itself: a manifest, a cache
// file or a log below a root that other processes (or a hostile user) can write to.
//
// identity(path): lstat — the entry itself, never what a symlink points to — as
//   { type, size, ino, mtimeNs }; null when nothing is there. One syscall: nothing is
//   opened, so a FIFO or a device at the path costs nothing and cannot block.
// readFileBounded(path, maxBytes): open with O_NOFOLLOW | O_NONBLOCK, fstat the descriptor
//   (the file actually opened, not the path), refuse anything but a regular file (ENOTREG)
//   or a file larger than maxBytes (EFBIG), then read it whole. Resolves
//   { data: Uint8Array, identity } — the identity of the bytes read, from the same fd.
#include "safeio.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace kvkeep {
namespace {

// Refuses a bound beyond what a Uint8Array can comfortably hold; manifests are KiBs.
constexpr double kMaxBound = 1 << 30;

class IdentityWorker : public PromiseWorker {
 public:
  IdentityWorker(Napi::Env env, std::string path) : PromiseWorker(env, "kvkeep:identity"), path_(std::move(path)) {}

 protected:
  void Work() override {
    if (::lstat(path_.c_str(), &st_) == 0) {
      found_ = true;
      return;
    }
    // Nothing there (or a parent is not a directory): not an error, just no file.
    if (errno == ENOENT || errno == ENOTDIR) return;
    failure_.Set(errno, "lstat", path_);
  }

  Napi::Value Result(Napi::Env env) override {
    if (!found_) return env.Null();
    return IdentityObject(env, st_);
  }

 private:
  std::string path_;
  struct stat st_ {};
  bool found_ = false;
};

// Sets the mtime (and atime) of each path that is a regular file to now, never through a
// symlink at the last component; one byte per path: 1 touched, 0 nothing there or not a
// regular file (ENOENT/ENOTDIR, or a symlink/FIFO/directory planted at the name). The
// directories above are the caller's to check. For a commit that is about to name hundreds
// of chunks: one call instead of three per chunk.
class TouchWorker : public PromiseWorker {
 public:
  TouchWorker(Napi::Env env, std::vector<std::string> paths) : PromiseWorker(env, "kvkeep:touchFiles"), paths_(std::move(paths)) {}

 protected:
  void Work() override {
    touched_.assign(paths_.size(), 0);
    for (size_t i = 0; i < paths_.size(); ++i) {
      const std::string& path = paths_[i];
      struct stat st;
      if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) continue;
        failure_.Set(errno, "lstat", path);
        return;
      }
      if (!S_ISREG(st.st_mode)) continue;
      if (::utimensat(AT_FDCWD, path.c_str(), nullptr, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // removed between the two calls
        failure_.Set(errno, "utimensat", path);
        return;
      }
      touched_[i] = 1;
    }
  }

  Napi::Value Result(Napi::Env env) override { return Napi::Buffer<uint8_t>::Copy(env, touched_.data(), touched_.size()); }

 private:
  std::vector<std::string> paths_;
  std::vector<uint8_t> touched_;
};

class BoundedReadWorker : public PromiseWorker {
 public:
  BoundedReadWorker(Napi::Env env, std::string path, size_t max_bytes)
      : PromiseWorker(env, "kvkeep:readFileBounded"), path_(std::move(path)), max_bytes_(max_bytes) {}

 protected:
  void Work() override {
    const int fd = OpenRegularFile(AT_FDCWD, path_.c_str(), 0, &st_);
    if (fd < 0) {
      failure_.Set(errno, "open", path_);
      return;
    }
    if (static_cast<unsigned long long>(st_.st_size) > max_bytes_) {
      failure_.Set(EFBIG, "read", path_);
      CloseFd(fd);
      return;
    }
    data_.resize(static_cast<size_t>(st_.st_size));
    size_t got = 0;
    for (;;) {
      // One byte of slack past the size: a file that grew since the fstat is read up to
      // the bound and refused beyond it, never read without limit.
      if (got == data_.size()) {
        if (data_.size() >= max_bytes_ + 1) break;
        data_.resize(std::min(max_bytes_ + 1, data_.size() + 4096));
      }
      const ssize_t n = ::read(fd, data_.data() + got, data_.size() - got);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        failure_.Set(errno, "read", path_);
        CloseFd(fd);
        return;
      }
      got += static_cast<size_t>(n);
    }
    CloseFd(fd);
    if (got > max_bytes_) {
      failure_.Set(EFBIG, "read", path_);
      return;
    }
    data_.resize(got);
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    // Allocate, then copy ourselves: never Napi::Buffer::Copy. Bare before 1.33 implements
    // napi_create_buffer_copy without copying (libnapi copied into the result_data out-pointer,
    // and not at all when it is NULL, as node-addon-api passes it), so every byte read arrived
    // as zero there and no manifest ever parsed. napi_create_buffer hands back the buffer's own
    // storage on every runtime.
    Napi::Buffer<unsigned char> data = Napi::Buffer<unsigned char>::New(env, data_.size());
    if (!data_.empty()) std::copy(data_.begin(), data_.end(), data.Data());
    out.Set("data", data);
    out.Set("identity", IdentityObject(env, st_));
    return out;
  }

 private:
  std::string path_;
  size_t max_bytes_;
  struct stat st_ {};
  std::vector<unsigned char> data_;
};

// identity(path) → Promise<{ type, size, ino, mtimeNs } | null>
Napi::Value Identity(const Napi::CallbackInfo& info) {
  auto* worker = new IdentityWorker(info.Env(), StringArg(info, 0, "path"));
  worker->Queue();
  return worker->Promise();
}

// touchFiles(paths) → Promise<Uint8Array> (1 per path touched)
Napi::Value TouchFiles(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "paths must be an array of strings");
  Napi::Array list = info[0].As<Napi::Array>();
  std::vector<std::string> paths;
  paths.reserve(list.Length());
  for (uint32_t i = 0; i < list.Length(); ++i) {
    Napi::Value item = list.Get(i);
    if (!item.IsString()) throw Napi::TypeError::New(info.Env(), "paths must be an array of strings");
    std::string path = item.As<Napi::String>().Utf8Value();
    if (path.find('\0') != std::string::npos) throw Napi::TypeError::New(info.Env(), "a path must not contain NUL");
    paths.push_back(std::move(path));
  }
  auto* worker = new TouchWorker(info.Env(), std::move(paths));
  worker->Queue();
  return worker->Promise();
}

// readFileBounded(path, maxBytes) → Promise<{ data: Uint8Array, identity }>
Napi::Value ReadFileBounded(const Napi::CallbackInfo& info) {
  std::string path = StringArg(info, 0, "path");
  if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "maxBytes must be a number");
  const double bound = info[1].As<Napi::Number>().DoubleValue();
  if (!(bound >= 0 && bound <= kMaxBound) || bound != static_cast<double>(static_cast<size_t>(bound))) {
    throw Napi::RangeError::New(info.Env(), "maxBytes must be an integer in [0, 1 GiB]");
  }
  auto* worker = new BoundedReadWorker(info.Env(), std::move(path), static_cast<size_t>(bound));
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitSafeIo(Napi::Env env, Napi::Object exports) {
  exports.Set("identity", Napi::Function::New<Identity>(env, "identity"));
  exports.Set("readFileBounded", Napi::Function::New<ReadFileBounded>(env, "readFileBounded"));
  exports.Set("touchFiles", Napi::Function::New<TouchFiles>(env, "touchFiles"));
}

}  // namespace kvkeep
