#include "mapped_file.hpp"

#include <cerrno>
#include <cstring>
#include <stdexcept>

#if defined(__linux__)
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define FASTSAC_HAVE_MMAP 1
#endif

namespace fastsac {
namespace {

constexpr char kMagic[8] = {'F', 'S', 'A', 'C', 'S', 'L', 'T', '1'};
constexpr int64_t kVersion = 1;

struct FileHeader {
  char magic[8];
  int64_t version;
  FileLayout layout;
  uint64_t generation;  // see MappedFile::generation(); not part of the layout check
};

[[noreturn]] void os_error(const std::string& path, const char* what, int err) {
  throw std::runtime_error(path + ": " + what + ": " + std::strerror(err));
}

}  // namespace

#ifdef FASTSAC_HAVE_MMAP
MappedFile::MappedFile(const std::string& path, const FileLayout& layout, size_t slots_bytes)
    : path_(path), slots_bytes_(slots_bytes) {
  const size_t stamp_bytes = static_cast<size_t>(layout.num_envs * layout.ring) * sizeof(int64_t);
  len_ = kHeaderBytes + slots_bytes + stamp_bytes;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ >= 0) {
    created_ = true;
  } else if (errno == EEXIST) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) os_error(path, "cannot open", errno);
  } else {
    os_error(path, "cannot create", errno);
  }
  // The lock goes with the open file: a second buffer, in this process or another, fails here.
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    if (err == EWOULDBLOCK)
      throw std::invalid_argument(path + ": another replay buffer holds this file");
    os_error(path, "cannot lock", err);
  }
  FileHeader header{};
  if (created_) {
    const int err = ::posix_fallocate(fd_, 0, static_cast<off_t>(len_));
    if (err != 0) {
      ::close(fd_);
      ::unlink(path.c_str());  // ours, and empty: a full disk leaves nothing behind
      os_error(path, "cannot allocate the file", err);
    }
    std::memcpy(header.magic, kMagic, sizeof kMagic);
    header.version = kVersion;
    header.layout = layout;
  } else {
    struct stat st {};
    const bool sized = ::fstat(fd_, &st) == 0 && static_cast<size_t>(st.st_size) >= sizeof header;
    if (!sized || ::pread(fd_, &header, sizeof header, 0) != static_cast<ssize_t>(sizeof header) ||
        std::memcmp(header.magic, kMagic, sizeof kMagic) != 0) {
      ::close(fd_);
      throw std::invalid_argument(path + ": not a fastsac replay file");
    }
    if (header.version != kVersion) {
      ::close(fd_);
      throw std::invalid_argument(path + ": replay file version " +
                                  std::to_string(header.version) + ", this fastsac reads " +
                                  std::to_string(kVersion));
    }
    if (std::memcmp(&header.layout, &layout, sizeof layout) != 0 ||
        static_cast<size_t>(st.st_size) != len_) {
      ::close(fd_);
      throw std::invalid_argument(path + ": a replay file of another buffer shape");
    }
  }
  void* p = ::mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    ::close(fd_);
    if (created_) ::unlink(path.c_str());
    os_error(path, "cannot map", err);
  }
  base_ = static_cast<uint8_t*>(p);
  // No MADV_RANDOM: a sampled step reads a run of neighbouring slots (its frame stack and
  // n-step window, ~6 slots of 21 KB for 84x84 RGB), which the kernel's read-ahead fetches in
  // a few large reads instead of one 4 KiB fault at a time (BENCHMARKS.md).
  ::madvise(base_ + kHeaderBytes, slots_bytes, MADV_NORMAL);
  if (created_) {
    std::memcpy(base_, &header, sizeof header);
    // No slot written yet: stamps of -1 (fallocate gives zeros, which is position 0).
    std::memset(stamps(), 0xff, stamp_bytes);
  }
}

MappedFile::~MappedFile() {
  if (base_) ::munmap(base_, len_);
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

uint64_t MappedFile::generation() const {
  return reinterpret_cast<const FileHeader*>(base_)->generation;
}

void MappedFile::set_generation(uint64_t generation) {
  reinterpret_cast<FileHeader*>(base_)->generation = generation;
}

void MappedFile::flush() const {
  if (::msync(base_, len_, MS_SYNC) != 0) os_error(path_, "cannot write to disk", errno);
}
#else
MappedFile::MappedFile(const std::string& path, const FileLayout&, size_t) : path_(path) {
  throw std::runtime_error(path + ": file-backed replay needs Linux");
}
MappedFile::~MappedFile() = default;
uint64_t MappedFile::generation() const { return 0; }
void MappedFile::set_generation(uint64_t) {}
void MappedFile::flush() const {}
#endif

}  // namespace fastsac
