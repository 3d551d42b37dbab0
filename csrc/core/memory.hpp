// Zeroed, lazily committed memory holding a replay core's slots. On Linux large blocks are
// mapped 2 MiB-aligned with MADV_HUGEPAGE: random sampling over a big buffer is otherwise dominated
// by TLB misses (one page walk per sampled step).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastsac {

class Memory {
 public:
  Memory() = default;
  explicit Memory(size_t bytes) {
#if defined(__linux__)
    constexpr size_t kHuge = size_t{2} << 20;
    if (bytes >= kHuge) {
      len_ = bytes + kHuge;
      void* p = mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      base_ = p;
      const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
      data_ = reinterpret_cast<uint8_t*>(a);
      madvise(data_, bytes, MADV_HUGEPAGE);  // a hint; failure only costs speed
      return;
    }
#endif
    base_ = std::calloc(bytes ? bytes : 1, 1);  // zero pages come lazily from the kernel
    if (!base_) throw std::bad_alloc();
    data_ = static_cast<uint8_t*>(base_);
  }
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  ~Memory() {
#if defined(__linux__)
    if (len_) {
      munmap(base_, len_);
      return;
    }
#endif
    std::free(base_);
  }
  uint8_t* data() const { return data_; }

 private:
  void* base_ = nullptr;
  size_t len_ = 0;  // non-zero when mmap'ed
  uint8_t* data_ = nullptr;
};

}  // namespace fastsac
