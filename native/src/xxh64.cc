#include "xxh64.h"

#include <cstring>

namespace kvkeep {
namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ULL;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// The spec reads lanes as little-endian; memcpy keeps unaligned reads legal (and compiles
// to a single load on x86/arm64).
inline uint64_t Read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

inline uint32_t Read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}

inline uint64_t Round(uint64_t acc, uint64_t lane) {
  acc += lane * kPrime2;
  acc = Rotl(acc, 31);
  return acc * kPrime1;
}

inline uint64_t MergeAccumulator(uint64_t acc, uint64_t acc_n) {
  acc ^= Round(0, acc_n);
  return acc * kPrime1 + kPrime4;
}

// Consumes whole 32-byte stripes from p; returns how many bytes were consumed.
// The four accumulators live in locals so the loop keeps them in registers.
inline size_t ConsumeStripes(uint64_t acc[4], const unsigned char* p, size_t len) {
  uint64_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  const unsigned char* const start = p;
  const unsigned char* const limit = p + (len & ~static_cast<size_t>(31));
  while (p < limit) {
    a0 = Round(a0, Read64(p));
    a1 = Round(a1, Read64(p + 8));
    a2 = Round(a2, Read64(p + 16));
    a3 = Round(a3, Read64(p + 24));
    p += 32;
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return static_cast<size_t>(p - start);
}

// Steps 4-6 of the spec: add the length, consume the last < 32 bytes, avalanche.
uint64_t Finish(uint64_t acc, uint64_t total_len, const unsigned char* p, size_t len) {
  acc += total_len;
  while (len >= 8) {
    acc ^= Round(0, Read64(p));
    acc = Rotl(acc, 27) * kPrime1 + kPrime4;
    p += 8;
    len -= 8;
  }
  if (len >= 4) {
    acc ^= static_cast<uint64_t>(Read32(p)) * kPrime1;
    acc = Rotl(acc, 23) * kPrime2 + kPrime3;
    p += 4;
    len -= 4;
  }
  while (len > 0) {
    acc ^= static_cast<uint64_t>(*p) * kPrime5;
    acc = Rotl(acc, 11) * kPrime1;
    ++p;
    --len;
  }
  acc ^= acc >> 33;
  acc *= kPrime2;
  acc ^= acc >> 29;
  acc *= kPrime3;
  acc ^= acc >> 32;
  return acc;
}

}  // namespace

void Xxh64::Reset(uint64_t seed) {
  seed_ = seed;
  total_len_ = 0;
  acc_[0] = seed + kPrime1 + kPrime2;
  acc_[1] = seed + kPrime2;
  acc_[2] = seed;
  acc_[3] = seed - kPrime1;
  mem_size_ = 0;
}

void Xxh64::Update(const void* data, size_t len) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  total_len_ += len;

  if (mem_size_ + len < 32) {
    if (len > 0) std::memcpy(mem_ + mem_size_, p, len);
    mem_size_ += len;
    return;
  }
  if (mem_size_ > 0) {
    const size_t fill = 32 - mem_size_;
    std::memcpy(mem_ + mem_size_, p, fill);
    ConsumeStripes(acc_, mem_, 32);
    p += fill;
    len -= fill;
    mem_size_ = 0;
  }
  const size_t consumed = ConsumeStripes(acc_, p, len);
  p += consumed;
  len -= consumed;
  if (len > 0) std::memcpy(mem_, p, len);
  mem_size_ = len;
}

uint64_t Xxh64::Digest() const {
  uint64_t acc;
  if (total_len_ >= 32) {
    acc = Rotl(acc_[0], 1) + Rotl(acc_[1], 7) + Rotl(acc_[2], 12) + Rotl(acc_[3], 18);
    acc = MergeAccumulator(acc, acc_[0]);
    acc = MergeAccumulator(acc, acc_[1]);
    acc = MergeAccumulator(acc, acc_[2]);
    acc = MergeAccumulator(acc, acc_[3]);
  } else {
    // Fewer than one stripe in total: the accumulators were never used.
    acc = seed_ + kPrime5;
  }
  return Finish(acc, total_len_, mem_, mem_size_);
}

uint64_t Xxh64::Oneshot(const void* data, size_t len, uint64_t seed) {
  Xxh64 state(seed);
  state.Update(data, len);
  return state.Digest();
}

}  // namespace kvkeep
