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
namespace {

// An exclusive lock on an open file, held as long as it stays open: a second buffer, in this
// process or another, fails here.
void lock_or_throw(int fd, const std::string& path) {
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return;
  const int err = errno;
  ::close(fd);
  if (err == EWOULDBLOCK)
    throw std::invalid_argument(path + ": another replay buffer holds this file");
  os_error(path, "cannot lock", err);
}

}  // namespace

MappedFile::MappedFile(const std::string& path, const FileLayout& layout, size_t slots_bytes)
    : path_(path), slots_bytes_(slots_bytes) {
  const size_t stamp_bytes = static_cast<size_t>(layout.num_envs * layout.ring) * sizeof(int64_t);
  len_ = kHeaderBytes + slots_bytes + stamp_bytes;
  // Two tries: a file another buffer creates between this one's look and its own link.
  for (int attempt = 0; attempt < 2 && fd_ < 0; ++attempt) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ >= 0) {
      lock_or_throw(fd_, path);
      open_existing(layout);
    } else if (errno != ENOENT) {
      os_error(path, "cannot open", errno);
    } else {
      create(layout, stamp_bytes);
    }
  }
  if (fd_ < 0)
    throw std::invalid_argument(path + ": other replay buffers created and removed this file "
                                "meanwhile; try again");
  // No MADV_RANDOM: a sampled step reads a run of neighbouring slots (its frame stack and
  // n-step window, ~6 slots of 21 KB for 84x84 RGB), which the kernel's read-ahead fetches in
  // a few large reads instead of one 4 KiB fault at a time (BENCHMARKS.md).
  ::madvise(base_ + kHeaderBytes, slots_bytes, MADV_NORMAL);
}

bool MappedFile::map() {
  void* p = ::mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) return false;
  base_ = static_cast<uint8_t*>(p);
  return true;
}

void MappedFile::open_existing(const FileLayout& layout) {
  FileHeader header{};
  struct stat st {};
  const bool sized = ::fstat(fd_, &st) == 0 && static_cast<size_t>(st.st_size) >= sizeof header;
  std::string refused;
  if (!sized || ::pread(fd_, &header, sizeof header, 0) != static_cast<ssize_t>(sizeof header) ||
      std::memcmp(header.magic, kMagic, sizeof kMagic) != 0) {
    refused = path_ + ": not a fastsac replay file";
  } else if (header.version != kVersion) {
    refused = path_ + ": replay file version " + std::to_string(header.version) +
              ", this fastsac reads " + std::to_string(kVersion);
  } else if (std::memcmp(&header.layout, &layout, sizeof layout) != 0 ||
             static_cast<size_t>(st.st_size) != len_) {
    refused = path_ + ": a replay file of another buffer shape";
  }
  if (!refused.empty()) {
    ::close(fd_);
    fd_ = -1;
    throw std::invalid_argument(refused);
  }
  // A creator killed between linking the file and removing its temporary name left that
  // name: a second name of this file, which a later create() must not truncate.
  const std::string tmp = path_ + ".new";
  struct stat left {};
  if (::stat(tmp.c_str(), &left) == 0 && left.st_dev == st.st_dev && left.st_ino == st.st_ino)
    ::unlink(tmp.c_str());
  if (!map()) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    os_error(path_, "cannot map", err);
  }
}

// The file is made whole under a temporary name and only then linked to `path`, so that a
// process killed while making it leaves no `path` without a header (which would be refused as
// foreign); the next buffer reuses the temporary file it left. The temporary file's lock
// orders its creators: only its holder truncates, links or removes it.
void MappedFile::create(const FileLayout& layout, size_t stamp_bytes) {
  const std::string tmp = path_ + ".new";
  struct stat st {};
  for (int attempt = 0;; ++attempt) {
    if (attempt == 8)
      throw std::invalid_argument(path_ + ": other replay buffers keep creating this file");
    fd_ = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) os_error(path_, "cannot create", errno);
    lock_or_throw(fd_, path_);  // held: another buffer is creating the file
    struct stat named {};
    const bool same = ::fstat(fd_, &st) == 0 && ::stat(tmp.c_str(), &named) == 0 &&
                      named.st_dev == st.st_dev && named.st_ino == st.st_ino;
    if (same && st.st_nlink == 1) break;
    if (same) ::unlink(tmp.c_str());  // a second name of a finished file: leave that file be
    ::close(fd_);  // else its creator removed or replaced it before this lock: look again
    fd_ = -1;
  }
  auto discard = [&] {  // ours and unlinked as `path`: nothing is left behind (lock held)
    if (base_) ::munmap(base_, len_);
    base_ = nullptr;
    ::unlink(tmp.c_str());
    ::close(fd_);
    fd_ = -1;
  };
  auto give_up = [&](const char* what, int err) {
    discard();
    os_error(path_, what, err);
  };
  if (::ftruncate(fd_, 0) != 0) give_up("cannot create", errno);  // a killed creator's
  if (const int err = ::posix_fallocate(fd_, 0, static_cast<off_t>(len_)); err != 0)
    give_up("cannot allocate the file", err);  // a full disk fails here, not in a later write
  if (!map()) give_up("cannot map", errno);
  FileHeader header{};
  std::memcpy(header.magic, kMagic, sizeof kMagic);
  header.version = kVersion;
  header.layout = layout;
  std::memcpy(base_, &header, sizeof header);
  // No slot written yet: stamps of -1 (fallocate gives zeros, which is position 0).
  std::memset(stamps(), 0xff, stamp_bytes);
  if (::msync(base_, len_, MS_SYNC) != 0) give_up("cannot write to disk", errno);
  if (::link(tmp.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    if (err != EEXIST) give_up("cannot create", err);
    discard();  // another buffer made the file meanwhile: the caller opens that one
    return;
  }
  ::unlink(tmp.c_str());
  created_ = true;
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

namespace {
constexpr uintptr_t kPage = 4096;
}  // namespace

bool MappedFile::resident(const uint8_t* p) const {
  unsigned char in_memory = 1;
  void* page = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~(kPage - 1));
  if (::mincore(page, kPage, &in_memory) != 0) return true;  // unknown: no hints
  return (in_memory & 1) != 0;
}

void MappedFile::will_need(const uint8_t* p, size_t len) const {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) & ~(kPage - 1);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(p) + len;
  ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_WILLNEED);  // a hint: errors ignored
}
#else
MappedFile::MappedFile(const std::string& path, const FileLayout&, size_t) : path_(path) {
  throw std::runtime_error(path + ": file-backed replay needs Linux");
}
MappedFile::~MappedFile() = default;
uint64_t MappedFile::generation() const { return 0; }
void MappedFile::set_generation(uint64_t) {}
void MappedFile::flush() const {}
bool MappedFile::resident(const uint8_t*) const { return true; }
void MappedFile::will_need(const uint8_t*, size_t) const {}
#endif

}  // namespace fastsac
