// A file mapped shared into memory: a replay core's slots on disk, bounded by the disk rather
// than RAM, with the kernel's page cache keeping the hot part in memory. The file starts with a
// page of header that records the layout, then the slots, then one int64 per slot: the
// position last written there (its write stamp), which tells a resume which slots were
// overwritten after the checkpoint it resumes from.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace fastsac {

struct FileLayout {
  int64_t num_envs;
  int64_t ring;
  int64_t stride;
  int64_t frame_bytes;
  int64_t action_dim;
  int64_t storage;
};

class MappedFile {
 public:
  static constexpr size_t kHeaderBytes = 4096;

  // Opens `path` (or creates it, sized for `slots_bytes` of slots and their stamps, with its
  // blocks allocated so that a full disk fails here rather than in a later write), maps it and
  // locks it for this process. A new file appears at `path` complete (it is made as
  // `path.new`, the name a killed creator's leftover keeps). An existing file must have this
  // layout. Throws std::invalid_argument for a file that is not such a replay file or that
  // another buffer holds, std::runtime_error for what the OS refuses (the message names path
  // and reason).
  MappedFile(const std::string& path, const FileLayout& layout, size_t slots_bytes);
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  uint8_t* slots() const { return base_ + kHeaderBytes; }
  // The lineage of the data in the file: a buffer that starts afresh on it writes a new one,
  // so that a checkpoint of an earlier lineage finds its slots gone, not someone else's.
  uint64_t generation() const;
  void set_generation(uint64_t generation);
  int64_t* stamps() const { return reinterpret_cast<int64_t*>(base_ + kHeaderBytes + slots_bytes_); }
  bool created() const { return created_; }
  // Writes every dirty page to the disk and waits (msync).
  void flush() const;
  // Whether the page holding `p` (inside the mapping) is in memory (mincore).
  bool resident(const uint8_t* p) const;
  // Starts reading the pages of [p, p + len) from the disk without waiting (MADV_WILLNEED):
  // faults on them later find them read, or in flight together rather than one at a time.
  void will_need(const uint8_t* p, size_t len) const;

 private:
  void open_existing(const FileLayout& layout);
  void create(const FileLayout& layout, size_t stamp_bytes);
  bool map();  // false: mmap failed (errno says why)

  std::string path_;
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  size_t len_ = 0;
  size_t slots_bytes_ = 0;
  bool created_ = false;
};

}  // namespace fastsac
