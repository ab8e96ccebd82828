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
//   .gather(size, files, fileSizes, prefixBytes, runs, literals, checksumFrom)
//                          Promise<{ prefixes, digests }>: the file becomes `size` bytes assembled
//                          from pieces of regular files (opened without following a symlink, each
//                          of exactly its expected size) and of `literals`, by `runs` (a
//                          Float64Array of (source, srcOffset, dstOffset, length, count,
//                          srcStride, dstStride) 7-tuples: `count` copies of `length` bytes, the
//                          k-th from srcOffset + k·srcStride to dstOffset + k·dstStride; a
//                          source < files.length being a file, else literals[source - files.length],
//                          the runs of one file together). Each file is read once: straight into
//                          place (few plain runs), or whole into a batch buffer whose files' runs
//                          are then copied interleaved (a transposed V: the rows of consecutive
//                          chunks land side by side) — into a populated shared mapping, a state
//                          joined from hundreds of chunk files in one call off the event loop.
//                          `prefixes` holds the first prefixBytes[i] bytes of each file (for the
//                          caller to check headers and tokens); `digests` the XXH64 of each file's
//                          bytes from `checksumFrom` on (a BigUint64Array; empty when it is -1).
//   .readRanges(into, ranges, size)
//                          Promise<void>: the (offset, length) pairs of `ranges` (a Float64Array)
//                          pread into the same offsets of `into`; rejects unless the file is
//                          `size` bytes before and after (a commit reads a state's headers and its
//                          new rows, not the rest)
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
#include <cstring>
#include <cstdint>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "common.h"
#include "xxh64.h"

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
                           InstanceMethod<&MemoryFile::Gather>("gather"),
                           InstanceMethod<&MemoryFile::ReadRanges>("readRanges"),
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
  Napi::Value Gather(const Napi::CallbackInfo& info);
  Napi::Value ReadRanges(const Napi::CallbackInfo& info);

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


// Assembling the file from pieces of other files and of memory (see the header comment).
class GatherWorker : public MemoryFileWorker {
 public:
  struct Literal {
    const uint8_t* data;
    size_t size;
  };

  GatherWorker(Napi::Env env, MemoryFile* file, Napi::Object self, size_t size, std::vector<std::string> files,
               std::vector<uint64_t> file_sizes, std::vector<size_t> prefix_bytes, std::vector<double> runs,
               Napi::Array literals, std::vector<Literal> literal_pieces, int64_t checksum_from)
      : MemoryFileWorker(env, "kvkeep:memoryFileGather", file, self),
        size_(size),
        files_(std::move(files)),
        file_sizes_(std::move(file_sizes)),
        prefix_bytes_(std::move(prefix_bytes)),
        runs_(std::move(runs)),
        literals_(Napi::Persistent(literals.As<Napi::Object>())),
        literal_views_(ViewReferences(literals)),
        literal_pieces_(std::move(literal_pieces)),
        checksum_from_(checksum_from) {}

 protected:
  void Work() override {
#if defined(__linux__)
    int rc;
    do {
      rc = ::ftruncate(fd_, static_cast<off_t>(size_));
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      failure_.Set(errno, "ftruncate", label_);
      return;
    }
    size_t prefix_total = 0;
    prefix_offsets_.reserve(files_.size());
    for (size_t p : prefix_bytes_) {
      prefix_offsets_.push_back(prefix_total);
      prefix_total += p;
    }
    prefixes_.assign(prefix_total, 0);
    if (checksum_from_ >= 0) digests_.assign(files_.size(), 0);
    uint8_t* dst = nullptr;
    if (size_ > 0) {
      // MAP_POPULATE: one call allocates and maps every page, instead of a fault per page.
      void* mapped = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, 0);
      if (mapped == MAP_FAILED) {
        failure_.Set(errno, "mmap", label_);
        return;
      }
      dst = static_cast<uint8_t*>(mapped);
    }
    // Unmapped however Copy ends (a bad_alloc of a batch buffer included).
    struct Unmap {
      uint8_t* at;
      size_t size;
      ~Unmap() {
        if (at != nullptr) ::munmap(at, size);
      }
    } unmap{dst, size_};
    Copy(dst);
#endif
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    out.Set("prefixes", Napi::Buffer<uint8_t>::Copy(env, prefixes_.data(), prefixes_.size()));
    std::vector<uint8_t> digests(digests_.size() * 8);
    for (size_t i = 0; i < digests_.size(); ++i) {
      for (int b = 0; b < 8; ++b) digests[i * 8 + b] = static_cast<uint8_t>(digests_[i] >> (8 * b));  // little-endian
    }
    out.Set("digests", Napi::Buffer<uint8_t>::Copy(env, digests.data(), digests.size()));
    return out;
  }

 private:
#if defined(__linux__)
  // What one thread of the gather has: its read buffer and its first failure.
  struct Lane {
    std::vector<uint8_t> scratch;
    SysFailure failure;
    std::string error;  // a failure that is no system error
    bool failed() const { return failure.failed() || !error.empty(); }
  };

  // One run, checked: `count` copies of `len` bytes, the k-th from src + k·src_stride to
  // dst + k·dst_stride (count 1: one range; a transposed V: a row of elements per copy).
  struct Run {
    size_t source, src, dst, len, count, src_stride, dst_stride;
  };

  // One file's runs [first, end) in runs_ (none: a file only its prefix and digest are wanted).
  struct Group {
    size_t source;
    size_t first;
    size_t end;
    bool strided;  // a run of more than one copy
  };

  static constexpr size_t kRunFields = 7;

  Run RunAt(size_t i) const {
    const double* r = &runs_[kRunFields * i];
    return {static_cast<size_t>(r[0]), static_cast<size_t>(r[1]), static_cast<size_t>(r[2]), static_cast<size_t>(r[3]),
            static_cast<size_t>(r[4]), static_cast<size_t>(r[5]), static_cast<size_t>(r[6])};
  }

  // Whether every copy of `run` lies within [0, limit) from `start` and `stride` (no overflow).
  static bool Within(size_t start, size_t stride, const Run& run, size_t limit) {
    if (run.count == 0) return true;
    size_t reach;
    if (__builtin_mul_overflow(run.count - 1, stride, &reach) || __builtin_add_overflow(reach, start, &reach) ||
        __builtin_add_overflow(reach, run.len, &reach)) {
      return false;
    }
    return reach <= limit;
  }

  // Opens file `index` (never through a symlink, a regular file only) and checks its exact
  // size. The fd, or -1 with the lane's failure set.
  int OpenChecked(Lane& lane, size_t index) {
    const std::string& path = files_[index];
    struct stat st;
    const int fd = OpenRegularFile(AT_FDCWD, path.c_str(), 0, &st);
    if (fd < 0) {
      lane.failure.Set(errno, "open", path);
      return -1;
    }
    const uint64_t expected = file_sizes_[index];
    if (static_cast<uint64_t>(st.st_size) != expected || prefix_bytes_[index] > expected ||
        (checksum_from_ >= 0 && static_cast<uint64_t>(checksum_from_) > expected)) {
      CloseFd(fd);
      lane.failure.Set(kErrWrongSize, "read", path);
      return -1;
    }
    return fd;
  }

  // pread exactly `len` bytes at `offset`; false with the lane's failure set (EWRONGSIZE when the file ends first).
  bool PreadExactly(Lane& lane, int fd, size_t index, uint8_t* to, size_t len, size_t offset) {
    size_t got = 0;
    while (got < len) {
      const ssize_t n = ::pread(fd, to + got, len - got, static_cast<off_t>(offset + got));
      if (n < 0) {
        if (errno == EINTR) continue;
        lane.failure.Set(errno, "pread", files_[index]);
        return false;
      }
      if (n == 0) {
        lane.failure.Set(kErrWrongSize, "read", files_[index]);
        return false;
      }
      got += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads file `index` whole into `to` (its size), records its prefix and, when asked, its digest.
  bool LoadWhole(Lane& lane, size_t index, uint8_t* to) {
    const int fd = OpenChecked(lane, index);
    if (fd < 0) return false;
    const size_t size = static_cast<size_t>(file_sizes_[index]);
    const bool ok = PreadExactly(lane, fd, index, to, size, 0);
    CloseFd(fd);
    if (!ok) return false;
    std::memcpy(prefixes_.data() + prefix_offsets_[index], to, prefix_bytes_[index]);
    if (checksum_from_ >= 0) {
      const size_t from = static_cast<size_t>(checksum_from_);
      digests_[index] = Xxh64::Oneshot(to + from, size - from, 0);
    }
    return true;
  }

  // Copies one file's runs into place, straight from the file (one copy of each byte): for
  // files of a few plain runs, without checksums.
  void CopyDirect(Lane& lane, const Group& group, uint8_t* dst) {
    const size_t index = group.source;
    const int fd = OpenChecked(lane, index);
    if (fd < 0) return;
    bool ok = PreadExactly(lane, fd, index, prefixes_.data() + prefix_offsets_[index], prefix_bytes_[index], 0);
    for (size_t i = group.first; ok && i < group.end; ++i) {
      const Run run = RunAt(i);
      ok = PreadExactly(lane, fd, index, dst + run.dst, run.len, run.src);
    }
    CloseFd(fd);
  }

  // Copies the runs of a batch of files read whole into `slots` (one per group): run by run,
  // copy by copy, file by file — so the copies of consecutive chunks into one row of a
  // transposed V land next to each other instead of a page apart.
  static void CopyInterleaved(const std::vector<const Group*>& batch, const std::vector<uint8_t*>& slots,
                              const std::vector<double>& runs, uint8_t* dst, size_t lane, size_t lanes) {
    size_t most = 0;
    for (const Group* g : batch) most = std::max(most, g->end - g->first);
    for (size_t r = lane; r < most; r += lanes) {
      size_t copies = 0;
      for (const Group* g : batch) {
        if (r < g->end - g->first) copies = std::max(copies, static_cast<size_t>(runs[kRunFields * (g->first + r) + 4]));
      }
      for (size_t k = 0; k < copies; ++k) {
        for (size_t f = 0; f < batch.size(); ++f) {
          const Group* g = batch[f];
          if (r >= g->end - g->first) continue;
          const double* run = &runs[kRunFields * (g->first + r)];
          const size_t count = static_cast<size_t>(run[4]);
          if (k >= count) continue;
          const size_t len = static_cast<size_t>(run[3]);
          if (len == 0) continue;
          std::memcpy(dst + static_cast<size_t>(run[2]) + k * static_cast<size_t>(run[6]),
                      slots[f] + static_cast<size_t>(run[1]) + k * static_cast<size_t>(run[5]), len);
        }
      }
    }
  }

  // Files read by runs at most this many are read straight into place (chunks whose V is not
  // transposed: 1 + 2 × layers runs), unless checksums are asked for or a run is strided.
  static constexpr size_t kDirectRuns = 512;
  // Threads copying at once: a copy of a state is memory-bound, and one thread does not use
  // all of a machine's bandwidth (measured on a 2-core VM: ~1.5× with two).
  static constexpr size_t kMaxLanes = 2;
  // Bytes of files read whole at a time before their runs are copied interleaved.
  static constexpr size_t kBatchBytes = 32u << 20;

  // Runs `work(lane)` for lane 0..lanes-1, lanes past the first on threads when they can be had.
  template <typename Work>
  static void OnLanes(size_t lanes, Work&& work) {
    std::vector<std::thread> threads;
    size_t started = 1;
    for (; started < lanes; ++started) {
      try {
        threads.emplace_back(work, started);
      } catch (const std::system_error&) {
        break;  // no thread to be had: this thread does the remaining lanes itself
      }
    }
    for (size_t l = started; l < lanes; ++l) work(l);
    work(0);
    for (std::thread& t : threads) t.join();
  }

  // Whether no two copies of the runs overlap in the file (with the byte count equal to the
  // size: every byte written exactly once, so nothing of the memfd's earlier content — another
  // state, perhaps of another scope — survives). Strided runs are grouped into families: runs
  // of one count and destination stride whose first copies lie within one stride of the
  // family's first (a transposed V layer: each chunk's piece of a row). A family is sound when
  // its first copies are disjoint within that stride; it then occupies [base, base + count ·
  // stride), and those spans and the plain runs must be disjoint.
  bool Disjoint() const {
    const size_t count = runs_.size() / kRunFields;
    std::vector<Run> strided;
    std::vector<std::pair<size_t, size_t>> spans;  // [begin, end)
    for (size_t i = 0; i < count; ++i) {
      const Run run = RunAt(i);
      if (run.len == 0) continue;
      if (run.count == 1) {
        spans.emplace_back(run.dst, run.dst + run.len);
      } else {
        if (run.dst_stride < run.len) return false;  // its own copies overlap
        strided.push_back(run);
      }
    }
    std::sort(strided.begin(), strided.end(), [](const Run& a, const Run& b) { return a.dst < b.dst; });
    for (size_t i = 0; i < strided.size();) {
      const Run& first = strided[i];
      size_t end_in_row = 0;  // how far the family's first copies reach, from its base
      size_t j = i;
      for (; j < strided.size(); ++j) {
        const Run& r = strided[j];
        if (r.count != first.count || r.dst_stride != first.dst_stride || r.dst - first.dst >= first.dst_stride) break;
        if (r.dst - first.dst < end_in_row) return false;  // overlaps the previous piece of the row
        end_in_row = r.dst - first.dst + r.len;
        if (end_in_row > first.dst_stride) return false;  // reaches into the next row
      }
      // Within the file (checked per run): (count - 1) · stride + a piece ≤ size, no overflow.
      spans.emplace_back(first.dst, first.dst + (first.count - 1) * first.dst_stride + end_in_row);
      i = j;
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) {
      if (spans[i].first < spans[i - 1].second) return false;
    }
    return true;
  }

  bool TakeLaneFailure(std::vector<Lane>& lanes) {
    for (const Lane& lane : lanes) {
      if (lane.failure.failed()) {
        failure_ = lane.failure;
        return true;
      }
      if (!lane.error.empty()) {
        SetError(lane.error);
        return true;
      }
    }
    return false;
  }

  void Copy(uint8_t* dst) {
    const size_t count = runs_.size() / kRunFields;
    const size_t file_count = files_.size();
    std::vector<bool> grouped(file_count, false);
    std::vector<Group> groups;
    std::vector<size_t> literal_runs;
    size_t covered = 0;
    // One pass on this thread: check every run and group each file's runs; nothing is written
    // until every run is known sound.
    for (size_t i = 0; i < count; ++i) {
      const Run run = RunAt(i);
      if (run.count == 0) return SetError("kvkeep: a gather run has no copies");
      if (!Within(run.dst, run.dst_stride, run, size_)) return SetError("kvkeep: a gather run ends past the file's size");
      size_t bytes;
      if (__builtin_mul_overflow(run.len, run.count, &bytes) || __builtin_add_overflow(covered, bytes, &covered)) {
        return SetError("kvkeep: the gather runs do not cover the file exactly");
      }
      if (run.source < file_count) {
        if (!Within(run.src, run.src_stride, run, static_cast<size_t>(file_sizes_[run.source]))) return SetError("kvkeep: a gather run reads past its file's end");
        if (groups.empty() || groups.back().source != run.source) {
          if (grouped[run.source]) return SetError("kvkeep: the runs of one source file must be together");
          grouped[run.source] = true;
          groups.push_back({run.source, i, i, false});
        }
        groups.back().end = i + 1;
        if (run.count > 1) groups.back().strided = true;
        continue;
      }
      const size_t literal = run.source - file_count;
      if (literal >= literal_pieces_.size()) return SetError("kvkeep: a gather run names no source");
      if (!Within(run.src, run.src_stride, run, literal_pieces_[literal].size)) return SetError("kvkeep: a gather run reads past its literal's end");
      literal_runs.push_back(i);
    }
    if (covered != size_) return SetError("kvkeep: the gather runs do not cover the file exactly");
    if (!Disjoint()) return SetError("kvkeep: gather runs overlap in the file");
    // Checked: now the literals (kvkeep's own small fields and the tail).
    for (size_t i : literal_runs) {
      const Run run = RunAt(i);
      const Literal& piece = literal_pieces_[run.source - file_count];
      for (size_t k = 0; k < run.count && run.len > 0; ++k) std::memcpy(dst + run.dst + k * run.dst_stride, piece.data + run.src + k * run.src_stride, run.len);
    }
    // Files no run reads still give their prefix and digest.
    for (size_t f = 0; f < file_count; ++f) {
      if (!grouped[f]) groups.push_back({f, 0, 0, false});
    }
    const size_t lanes_wanted = std::min<size_t>({kMaxLanes, std::max<unsigned>(1, std::thread::hardware_concurrency()), std::max<size_t>(1, groups.size())});
    std::vector<Lane> lanes(lanes_wanted);

    // Files of a few plain runs, without checksums: straight into place, files spread over the lanes.
    std::vector<const Group*> direct, staged;
    for (const Group& g : groups) {
      if (checksum_from_ < 0 && !g.strided && g.end - g.first <= kDirectRuns) direct.push_back(&g);
      else staged.push_back(&g);
    }
    const size_t direct_lanes = std::min(lanes.size(), std::max<size_t>(1, direct.size()));
    OnLanes(direct_lanes, [&](size_t l) {
      for (size_t i = l; i < direct.size() && !lanes[l].failed(); i += direct_lanes) CopyDirect(lanes[l], *direct[i], dst);
    });
    if (TakeLaneFailure(lanes)) return;

    // The rest in batches: each batch's files read whole (spread over the lanes), then their
    // runs copied interleaved (run indexes spread over the lanes: their copies never overlap).
    std::vector<uint8_t> scratch;
    for (size_t at = 0; at < staged.size();) {
      std::vector<const Group*> batch;
      std::vector<size_t> offsets;
      size_t bytes = 0;
      while (at < staged.size() && (batch.empty() || bytes + file_sizes_[staged[at]->source] <= kBatchBytes)) {
        offsets.push_back(bytes);
        bytes += static_cast<size_t>(file_sizes_[staged[at]->source]);
        batch.push_back(staged[at++]);
      }
      if (scratch.size() < bytes) scratch.resize(bytes);
      std::vector<uint8_t*> slots;
      for (size_t offset : offsets) slots.push_back(scratch.data() + offset);
      const size_t read_lanes = std::min(lanes.size(), batch.size());
      OnLanes(read_lanes, [&](size_t l) {
        for (size_t i = l; i < batch.size() && !lanes[l].failed(); i += read_lanes) {
          if (!LoadWhole(lanes[l], batch[i]->source, slots[i])) return;
        }
      });
      if (TakeLaneFailure(lanes)) return;
      OnLanes(lanes.size(), [&](size_t l) { CopyInterleaved(batch, slots, runs_, dst, l, lanes.size()); });
    }
  }
#endif

  size_t size_;
  std::vector<std::string> files_;
  std::vector<uint64_t> file_sizes_;
  std::vector<size_t> prefix_bytes_;
  std::vector<double> runs_;
  Napi::ObjectReference literals_;
  // Each literal view held too: the worker reads them off the JS thread, and the array alone
  // would not keep a view that JS replaced in it alive.
  std::vector<Napi::ObjectReference> literal_views_;

  static std::vector<Napi::ObjectReference> ViewReferences(Napi::Array literals) {
    std::vector<Napi::ObjectReference> views;
    for (uint32_t i = 0; i < literals.Length(); ++i) views.push_back(Napi::Persistent(literals.Get(i).As<Napi::Object>()));
    return views;
  }
  std::vector<Literal> literal_pieces_;
  int64_t checksum_from_;
  std::vector<size_t> prefix_offsets_;
  std::vector<uint8_t> prefixes_;
  std::vector<uint64_t> digests_;
};

// Reads chosen ranges of the file into the same offsets of the caller's buffer: a commit
// reads a state's headers and its new rows, never the rest. The size is checked before and
// after (a file that changes size is still being written: its bytes are not one state).
class ReadRangesWorker : public MemoryFileWorker {
 public:
  ReadRangesWorker(Napi::Env env, MemoryFile* file, Napi::Object self, Napi::Uint8Array target, std::vector<double> ranges, size_t size)
      : MemoryFileWorker(env, "kvkeep:memoryFileReadRanges", file, self),
        target_(Napi::Persistent(target)),
        data_(target.Data()),
        ranges_(std::move(ranges)),
        size_(size) {}

 protected:
  void Work() override {
#if defined(__linux__)
    if (!SizeIs()) return;
    for (size_t i = 0; i + 1 < ranges_.size(); i += 2) {
      const size_t offset = static_cast<size_t>(ranges_[i]);
      const size_t length = static_cast<size_t>(ranges_[i + 1]);
      size_t got = 0;
      while (got < length) {
        const ssize_t n = ::pread(fd_, data_ + offset + got, length - got, static_cast<off_t>(offset + got));
        if (n < 0) {
          if (errno == EINTR) continue;
          failure_.Set(errno, "pread", label_);
          return;
        }
        if (n == 0) return SetError("kvkeep: the memory file changed size while it was being read");
        got += static_cast<size_t>(n);
      }
    }
    SizeIs();
#endif
  }

 private:
  bool SizeIs() {
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
      failure_.Set(errno, "fstat", label_);
      return false;
    }
    if (static_cast<size_t>(st.st_size) != size_) {
      SetError("kvkeep: the memory file changed size while it was being read");
      return false;
    }
    return true;
  }

  Napi::Reference<Napi::Uint8Array> target_;
  uint8_t* data_;
  std::vector<double> ranges_;
  size_t size_;
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


Napi::Value MemoryFile::Gather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckUsable(env, "gather");
  auto fail = [&](const char* what) { throw Napi::TypeError::New(env, what); };
  if (info.Length() < 7) fail("gather(size, files, fileSizes, prefixBytes, runs, literals, checksumFrom)");
  if (!info[0].IsNumber()) fail("size must be a number");
  const double size = info[0].As<Napi::Number>().DoubleValue();
  if (!(size >= 0 && size <= 9007199254740991.0) || size != static_cast<double>(static_cast<uint64_t>(size))) fail("size must be a non-negative integer");
  if (!info[1].IsArray() || !info[2].IsArray() || !info[3].IsArray()) fail("files, fileSizes and prefixBytes must be arrays");
  Napi::Array files_in = info[1].As<Napi::Array>();
  Napi::Array sizes_in = info[2].As<Napi::Array>();
  Napi::Array prefix_in = info[3].As<Napi::Array>();
  const uint32_t n = files_in.Length();
  if (sizes_in.Length() != n || prefix_in.Length() != n) fail("files, fileSizes and prefixBytes must have one entry per file");
  std::vector<std::string> files;
  std::vector<uint64_t> sizes;
  std::vector<size_t> prefixes;
  for (uint32_t i = 0; i < n; ++i) {
    Napi::Value f = files_in.Get(i), z = sizes_in.Get(i), p = prefix_in.Get(i);
    if (!f.IsString() || !z.IsNumber() || !p.IsNumber()) fail("files must be strings, fileSizes and prefixBytes numbers");
    std::string path = f.As<Napi::String>().Utf8Value();
    if (path.find('\0') != std::string::npos) fail("a file path must not contain NUL");
    const double zs = z.As<Napi::Number>().DoubleValue(), ps = p.As<Napi::Number>().DoubleValue();
    if (!(zs >= 0 && zs <= 1073741824.0) || !(ps >= 0 && ps <= zs)) fail("a file size must be in [0, 1 GiB], its prefix at most its size");
    files.push_back(std::move(path));
    sizes.push_back(static_cast<uint64_t>(zs));
    prefixes.push_back(static_cast<size_t>(ps));
  }
  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) fail("runs must be a Float64Array");
  Napi::Float64Array runs_in = info[4].As<Napi::Float64Array>();
  if (runs_in.ElementLength() % 7 != 0) fail("runs must hold (source, srcOffset, dstOffset, length, count, srcStride, dstStride) 7-tuples");
  std::vector<double> runs(runs_in.Data(), runs_in.Data() + runs_in.ElementLength());
  for (double v : runs) {
    if (!(v >= 0 && v <= 9007199254740991.0) || v != static_cast<double>(static_cast<uint64_t>(v))) fail("runs must hold non-negative integers");
  }
  if (!info[5].IsArray()) fail("literals must be an array of Uint8Arrays");
  Napi::Array literals = info[5].As<Napi::Array>();
  std::vector<GatherWorker::Literal> pieces;
  for (uint32_t i = 0; i < literals.Length(); ++i) {
    Napi::Value part = literals.Get(i);
    if (!part.IsTypedArray() || part.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) fail("literals must be an array of Uint8Arrays");
    Napi::Uint8Array bytes = part.As<Napi::Uint8Array>();
    pieces.push_back({bytes.Data(), bytes.ByteLength()});
  }
  if (!info[6].IsNumber()) fail("checksumFrom must be a number (-1: no checksums)");
  const int64_t checksum_from = info[6].As<Napi::Number>().Int64Value();
  auto* worker = new GatherWorker(env, this, Value(), static_cast<size_t>(size), std::move(files), std::move(sizes), std::move(prefixes),
                                  std::move(runs), literals, std::move(pieces), checksum_from < 0 ? -1 : checksum_from);
  worker->Queue();
  return worker->Promise();
}

Napi::Value MemoryFile::ReadRanges(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckUsable(env, "read");
  if (info.Length() < 3 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(env, "readRanges(into: Uint8Array, ranges: Float64Array, size: number)");
  }
  Napi::Uint8Array into = info[0].As<Napi::Uint8Array>();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) throw Napi::TypeError::New(env, "ranges must be a Float64Array");
  Napi::Float64Array ranges_in = info[1].As<Napi::Float64Array>();
  if (ranges_in.ElementLength() % 2 != 0) throw Napi::TypeError::New(env, "ranges must hold (offset, length) pairs");
  if (!info[2].IsNumber()) throw Napi::TypeError::New(env, "size must be a number");
  const double size = info[2].As<Napi::Number>().DoubleValue();
  if (!(size >= 0 && size <= static_cast<double>(into.ByteLength())) || size != static_cast<double>(static_cast<uint64_t>(size))) {
    throw Napi::TypeError::New(env, "size must be an integer no larger than into");
  }
  std::vector<double> ranges(ranges_in.Data(), ranges_in.Data() + ranges_in.ElementLength());
  for (size_t i = 0; i < ranges.size(); i += 2) {
    const double offset = ranges[i], length = ranges[i + 1];
    if (!(offset >= 0 && length >= 0) || offset != static_cast<double>(static_cast<uint64_t>(offset)) ||
        length != static_cast<double>(static_cast<uint64_t>(length)) || offset + length > size) {
      throw Napi::TypeError::New(env, "ranges must be non-negative integers within size");
    }
  }
  auto* worker = new ReadRangesWorker(env, this, Value(), into, std::move(ranges), static_cast<size_t>(size));
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitMemFd(Napi::Env env, Napi::Object exports) {
  exports.Set("MemoryFile", MemoryFile::Define(env));
  exports.Set("memoryFileSupported", Napi::Boolean::New(env, kSupported));
}

}  // namespace kvkeep
