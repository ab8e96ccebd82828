// Advisory file locks for cross-process exclusion.
//
// Why flock(2) and not fcntl(F_SETLK) record locks: POSIX record locks belong to the
// *process*, so closing any fd of the file anywhere in the process (e.g. an unrelated
// fs.readFile of the lock file) silently drops the lock, and two holders in one process
// never conflict. flock locks belong to the open file description: they are released
// only when our fd is closed (or the process dies — the OS cleans up after SIGKILL),
// and two handles in the same process conflict exactly like two processes do, which
// lets the single-process tests exercise the real cross-process semantics.
// (OFD locks, F_OFD_SETLK, would also work but are Linux-only; flock is on every BSD/macOS.)
//
// Why there is no blocking acquire here: a blocking flock() would have to run on a
// libuv threadpool thread, which it would occupy for as long as the holder keeps the
// lock — four waiters would starve every fs call and hash worker in the process — and
// it cannot be interrupted when the caller's AbortSignal fires. So `tryAcquire` is
// non-blocking and the TypeScript side polls it with a short backoff.
//
// Identity check: a holder may unlink the lock file before releasing it (to prune a
// directory). A waiter that opened the file before the unlink would then acquire a lock
// on an orphaned inode that nobody else can ever see, while a newcomer creates a fresh
// file at the same path and locks that: two "holders". So after each successful flock we
// compare fstat(fd) with lstat(path) and, if the path is gone or now names another inode,
// close, reopen (re-creating the file) and try again.
#include "lock.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "common.h"

namespace kvkeep {
namespace {

// mkdir -p for the parent directory of `path` (used without `under` only). Returns 0 or an errno value.
int MakeParentDirs(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos || slash == 0) return 0;
  const std::string dir = path.substr(0, slash);
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0777) != 0 && errno != EEXIST) {
      // EEXIST covers both "already a directory" and "a file is in the way"; the open
      // that follows reports the latter as ENOTDIR.
      return errno;
    }
  }
  return 0;
}

// Opens (creating if missing) the lock file `name` in the directory `dirfd`: never through
// a symlink (O_NOFOLLOW: ELOOP; O_CREAT|O_EXCL never follows one either), never blocking
// on a FIFO, and only a regular file (ENOTREG otherwise). Returns the fd, or -1 with errno.
int OpenLockFileAt(int dirfd, const char* name) {
  constexpr int kBase = O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
  for (int attempt = 0; attempt < 16; ++attempt) {
    int fd = OpenAtRetry(dirfd, name, O_RDWR | kBase);
    if (fd < 0 && errno == ENOENT) {
      fd = OpenAtRetry(dirfd, name, O_RDWR | O_CREAT | O_EXCL | kBase, 0666);
      if (fd < 0 && errno == EEXIST) continue;  // created (or planted) meanwhile: look again
    }
    if (fd < 0 && (errno == EACCES || errno == EROFS)) {
      // flock does not need write access: a lock file created by another user of a
      // shared cache root, or on a read-only mount, can still be locked read-only.
      const int first = errno;
      fd = OpenAtRetry(dirfd, name, O_RDONLY | kBase);
      if (fd < 0 && errno == ENOENT) errno = first;  // report the original failure
    }
    if (fd < 0) return -1;
    struct stat st;
    int err = 0;
    if (::fstat(fd, &st) != 0) {
      err = errno;
    } else if (!S_ISREG(st.st_mode)) {
      err = kErrNotRegular;
    }
    if (err != 0) {
      CloseFd(fd);
      errno = err;
      return -1;
    }
    return fd;
  }
  errno = EEXIST;
  return -1;
}

// Walks from the directory `under` (trusted: it may itself be reached through symlinks)
// down the directories of `path` below it, creating missing ones, without following a
// symlink at any level (ELOOP; a file in the way is ENOTDIR). Returns an fd of the lock
// file's directory, or -1 with errno.
int OpenDirUnder(const std::string& under, const std::string& path, std::string* name) {
  if (path.size() <= under.size() + 1 || path.compare(0, under.size(), under) != 0 || path[under.size()] != '/') {
    errno = EINVAL;
    return -1;
  }
  const std::string rel = path.substr(under.size() + 1);
  const size_t last = rel.find_last_of('/');
  *name = last == std::string::npos ? rel : rel.substr(last + 1);
  int dirfd = OpenRetry(under.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECTORY);
  if (dirfd < 0) return -1;
  if (last == std::string::npos) return dirfd;
  size_t start = 0;
  while (start <= last) {
    const size_t end = rel.find('/', start);
    const std::string component = rel.substr(start, end - start);
    start = end + 1;
    if (component.empty() || component == "." || component == "..") {
      CloseFd(dirfd);
      errno = EINVAL;
      return -1;
    }
    constexpr int kDirFlags = O_RDONLY | O_CLOEXEC | O_DIRECTORY | O_NOFOLLOW;
    int next = OpenAtRetry(dirfd, component.c_str(), kDirFlags);
    if (next < 0 && errno == ENOENT) {
      // Missing (never made, or pruned by another process a moment ago): make it here,
      // under the descriptor already checked, then open what is there now.
      if (::mkdirat(dirfd, component.c_str(), 0777) != 0 && errno != EEXIST) {
        const int err = errno;
        CloseFd(dirfd);
        errno = err;
        return -1;
      }
      next = OpenAtRetry(dirfd, component.c_str(), kDirFlags);
    }
    const int err = errno;
    CloseFd(dirfd);
    if (next < 0) {
      errno = err;
      return -1;
    }
    dirfd = next;
  }
  return dirfd;
}

// How many times one tryAcquire re-opens after finding a stale inode before it reports
// "busy" and lets the caller poll again (only reachable if the path churns constantly).
constexpr int kMaxIdentityRetries = 64;

class Lock : public Napi::ObjectWrap<Lock> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Lock",
                       {
                           InstanceMethod<&Lock::TryAcquire>("tryAcquire"),
                           InstanceMethod<&Lock::Release>("release"),
                           InstanceMethod<&Lock::UnlinkAndRelease>("unlinkAndRelease"),
                       });
  }

  // new Lock(path, exclusive, under?): opens (creating the file and missing parent
  // directories) without locking yet. With `under` (a directory `path` lies below, e.g. a
  // cache root), no level below it is ever a symlink. Throws a system error if the file
  // cannot be opened (ELOOP for a symlink, ENOTREG for a FIFO, directory or device).
  explicit Lock(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Lock>(info) {
    path_ = StringArg(info, 0, "path");
    if (info.Length() < 2 || !info[1].IsBoolean()) {
      throw Napi::TypeError::New(info.Env(), "exclusive must be a boolean");
    }
    exclusive_ = info[1].As<Napi::Boolean>().Value();
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) under_ = StringArg(info, 2, "under");
    const int err = OpenFd();
    if (err != 0) throw SystemError(info.Env(), err, "open", path_);
  }

  // If JS drops the last reference without releasing, nobody can ever release the lock:
  // closing the fd on finalisation keeps a leaked handle from wedging the cache forever.
  ~Lock() override { CloseFd(fd_); }

 private:
  // Opens path_ into fd_. Returns 0 or an errno value.
  int OpenFd() {
    if (!under_.empty()) {
      for (int attempt = 0;; ++attempt) {
        std::string name;
        const int dirfd = OpenDirUnder(under_, path_, &name);
        int fd = -1;
        int err = 0;
        if (dirfd < 0) {
          err = errno;
        } else {
          fd = OpenLockFileAt(dirfd, name.c_str());
          err = errno;
          CloseFd(dirfd);
        }
        if (fd >= 0) {
          fd_ = fd;
          return 0;
        }
        // ENOENT: another process pruned a level between our walk's steps (a directory we
        // hold open was removed, so nothing can be made in it): walk again from `under`.
        if (err == ENOENT && attempt < kMaxIdentityRetries) continue;
        return err;
      }
    }
    for (int attempt = 0;; ++attempt) {
      const int fd = OpenLockFileAt(AT_FDCWD, path_.c_str());
      if (fd >= 0) {
        fd_ = fd;
        return 0;
      }
      const int err = errno;
      // The parent directory is missing (never created, or pruned by another process
      // between our mkdir and open): create it and retry, a bounded number of times.
      if (err == ENOENT && attempt < kMaxIdentityRetries) {
        // ENOENT from mkdir itself means a racing prune removed a component we had just
        // seen exist: start over, like the open's own ENOENT.
        const int mkdir_err = MakeParentDirs(path_);
        if (mkdir_err != 0 && mkdir_err != ENOENT) return mkdir_err;
        continue;
      }
      return err;
    }
  }

  Napi::Value TryAcquire(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (held_) return Napi::Boolean::New(env, true);
    if (fd_ < 0) throw Napi::Error::New(env, "kvkeep: this lock was already released");

    const int op = (exclusive_ ? LOCK_EX : LOCK_SH) | LOCK_NB;
    for (int attempt = 0; attempt < kMaxIdentityRetries; ++attempt) {
      int rc;
      do {
        rc = ::flock(fd_, op);
      } while (rc != 0 && errno == EINTR);
      if (rc != 0) {
        if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
        const int err = errno;
        throw SystemError(env, err, "flock", path_);
      }

      struct stat held_st, path_st;
      if (::fstat(fd_, &held_st) != 0) {
        const int err = errno;
        throw SystemError(env, err, "fstat", path_);
      }
      // lstat: a symlink planted at the path is another inode, never what it points to.
      if (::lstat(path_.c_str(), &path_st) == 0) {
        if (path_st.st_dev == held_st.st_dev && path_st.st_ino == held_st.st_ino) {
          held_ = true;
          return Napi::Boolean::New(env, true);
        }
      } else if (errno != ENOENT) {
        const int err = errno;
        throw SystemError(env, err, "stat", path_);
      }

      // Stale: the file we locked was unlinked (and maybe replaced) while we waited.
      // Closing drops the lock on the orphan; reopen the current file and try that.
      CloseFd(fd_);
      fd_ = -1;
      const int err = OpenFd();
      if (err != 0) throw SystemError(env, err, "open", path_);
    }
    return Napi::Boolean::New(env, false);
  }

  void Release(const Napi::CallbackInfo&) {
    CloseFd(fd_);
    fd_ = -1;
    held_ = false;
  }

  // Unlinks the lock file (only if we hold it exclusively and the path still names our
  // inode), then closes. Unlinking *before* closing is what makes pruning safe: nobody
  // can acquire this inode between the unlink and the close, and waiters that already
  // opened it detect the unlink through the identity check.
  void UnlinkAndRelease(const Napi::CallbackInfo& info) {
    if (fd_ < 0) return;
    int err = 0;
    if (held_ && exclusive_) {
      struct stat held_st, path_st;
      if (::fstat(fd_, &held_st) == 0 && ::lstat(path_.c_str(), &path_st) == 0 &&
          held_st.st_dev == path_st.st_dev && held_st.st_ino == path_st.st_ino) {
        if (::unlink(path_.c_str()) != 0 && errno != ENOENT) err = errno;
      }
    }
    CloseFd(fd_);
    fd_ = -1;
    held_ = false;
    if (err != 0) throw SystemError(info.Env(), err, "unlink", path_);
  }

  std::string path_;
  std::string under_;
  bool exclusive_ = false;
  int fd_ = -1;
  bool held_ = false;
};

}  // namespace

void InitLock(Napi::Env env, Napi::Object exports) { exports.Set("Lock", Lock::Define(env)); }

}  // namespace kvkeep
