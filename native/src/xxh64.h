// XXH64, written from the specification
// (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md), streaming form.
// Pure C++: no Node-API here, so it can be unit-tested and benchmarked on its own.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvkeep {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0) { Reset(seed); }

  void Reset(uint64_t seed);
  void Update(const void* data, size_t len);
  // Does not modify the state: more input may follow a digest.
  uint64_t Digest() const;

  static uint64_t Oneshot(const void* data, size_t len, uint64_t seed);

 private:
  uint64_t seed_;
  uint64_t total_len_;
  uint64_t acc_[4];
  unsigned char mem_[32];  // a partial stripe carried between Update calls
  size_t mem_size_;
};

}  // namespace kvkeep
