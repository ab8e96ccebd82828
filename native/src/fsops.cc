// Durability primitives Node's fs lacks or makes awkward: fsync of a path (file or
// directory) and a rename that refuses to replace an existing target.
#include "fsops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include <string>
#include <utility>

#include "common.h"

#if defined(__linux__) && !defined(RENAME_NOREPLACE)
#define RENAME_NOREPLACE (1 << 0)  // <linux/fs.h>; older glibc headers lack it
#endif

namespace kvkeep {
namespace {

class FsyncWorker : public PromiseWorker {
 public:
  FsyncWorker(Napi::Env env, std::string path, bool directory)
      : PromiseWorker(env, "kvkeep:fsync"), path_(std::move(path)), directory_(directory) {}

 protected:
  void Work() override {
    // O_RDONLY is enough: fsync flushes the inode whatever the fd's access mode, and a
    // directory can only be opened read-only. fsync on a directory makes the entries
    // created/renamed in it durable — the step an atomic rename needs to survive a crash.
    // A file is opened like every file kvkeep reads (no symlink, no blocking, regular
    // only); a directory must be one (the root itself may legitimately be a symlink).
    struct stat st;
    const int fd = directory_ ? OpenRetry(path_.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECTORY)
                              : OpenRegularFile(AT_FDCWD, path_.c_str(), 0, &st);
    if (fd < 0) {
      failure_.Set(errno, "open", path_);
      return;
    }
    int rc;
    do {
      rc = ::fsync(fd);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) failure_.Set(errno, "fsync", path_);
    CloseFd(fd);
  }

 private:
  std::string path_;
  bool directory_;
};

class RenameWorker : public PromiseWorker {
 public:
  RenameWorker(Napi::Env env, std::string from, std::string to, bool force_link)
      : PromiseWorker(env, "kvkeep:renameNoReplace"),
        from_(std::move(from)),
        to_(std::move(to)),
        force_link_(force_link) {}

 protected:
  void Work() override {
#if defined(__linux__) && defined(SYS_renameat2)
    if (!force_link_) {
      // The raw syscall rather than glibc's renameat2() wrapper (glibc >= 2.28 only), so
      // the addon also builds and runs against older C libraries.
      if (::syscall(SYS_renameat2, AT_FDCWD, from_.c_str(), AT_FDCWD, to_.c_str(), RENAME_NOREPLACE) == 0) {
        method_ = "renameat2";
        return;
      }
      // EINVAL: this filesystem does not support the flag (e.g. some FUSE/NFS setups);
      // ENOSYS: kernel older than 3.15. Anything else is a real answer (EEXIST included).
      if (errno != EINVAL && errno != ENOSYS) {
        failure_.Set(errno, "renameat2", from_, to_);
        return;
      }
    }
#endif
    LinkUnlink();
  }

  Napi::Value Result(Napi::Env env) override { return Napi::String::New(env, method_); }

 private:
  // link() also fails with EEXIST if the target exists and is atomic, so it gives the same
  // no-replace guarantee; the cost is a moment where both names exist, which is harmless
  // for our temp-file → cache-file renames. Filesystems without hard links (EPERM) get
  // an error rather than a racy check-then-rename.
  void LinkUnlink() {
    if (::link(from_.c_str(), to_.c_str()) != 0) {
      failure_.Set(errno, "link", from_, to_);
      return;
    }
    method_ = "link";
    // ENOENT: someone else already removed the source; the target is in place, so the
    // rename as such succeeded.
    if (::unlink(from_.c_str()) != 0 && errno != ENOENT) failure_.Set(errno, "unlink", from_);
  }

  std::string from_;
  std::string to_;
  bool force_link_;
  const char* method_ = "";
};

Napi::Value FsyncFile(const Napi::CallbackInfo& info) {
  auto* worker = new FsyncWorker(info.Env(), StringArg(info, 0, "path"), false);
  worker->Queue();
  return worker->Promise();
}

Napi::Value FsyncDir(const Napi::CallbackInfo& info) {
  auto* worker = new FsyncWorker(info.Env(), StringArg(info, 0, "path"), true);
  worker->Queue();
  return worker->Promise();
}

// renameNoReplace(from, to, forceLinkFallback?): resolves with the method used,
// "renameat2" or "link" (for diagnostics; tests force the fallback to cover it).
Napi::Value RenameNoReplace(const Napi::CallbackInfo& info) {
  const bool force_link = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  auto* worker =
      new RenameWorker(info.Env(), StringArg(info, 0, "from"), StringArg(info, 1, "to"), force_link);
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitFsOps(Napi::Env env, Napi::Object exports) {
  exports.Set("fsyncFile", Napi::Function::New<FsyncFile>(env, "fsyncFile"));
  exports.Set("fsyncDir", Napi::Function::New<FsyncDir>(env, "fsyncDir"));
  exports.Set("renameNoReplace", Napi::Function::New<RenameNoReplace>(env, "renameNoReplace"));
}

}  // namespace kvkeep
