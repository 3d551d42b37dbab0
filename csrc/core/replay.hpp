// The replay-memory core: plain C++17, no Python, no torch.
//
// Every env stream owns a ring of `ring` slots. A slot is one record: a header, the step's
// action, and one frame (storage "episode") or obs + next_obs frames (storage "transition").
// Positions are absolute per stream (0, 1, 2, ... never wrapping); slot = position % ring.
//
// Episode storage: an episode of T steps occupies T + 1 consecutive positions; position i holds
// observation i, and the step taken from it (action, reward) when i < T. The next observation
// of a step is the next position, so each observation is stored once; the last position holds
// the final observation (what a truncated episode bootstraps from).
// Transition storage: one position per step, holding obs and next_obs as given.
//
// Frame stacks and n-step returns are built at sample time from neighbouring positions of the
// same episode (header.ep_first .. header.ep_end). A step is sampleable when its stack and its
// n-step window are still held and, for an episode still running, the window is complete.
#pragma once
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <string>

#include "mapped_file.hpp"
#include "memory.hpp"
#include "rng.hpp"

namespace fastsac {

enum class Storage : int { Episode = 0, Transition = 1 };

// Actions, rewards and discounts are float32 (numpy's and torch's float32 on both sides).
static_assert(sizeof(float) == 4, "float must be 4 bytes, as numpy's float32");
constexpr int64_t kFloatBytes = sizeof(float);

struct ReplayConfig {
  int64_t num_envs = 1;
  int64_t ring = 1;          // slots per env stream
  int64_t frame_bytes = 1;   // bytes of one observation
  int64_t action_dim = 1;    // float32 values per action
  int64_t frame_stack = 1;
  int64_t n_step = 1;
  int64_t obs_float_bytes = 0;  // 2, 4 or 8 when observations are IEEE floats: NaN/inf rejected
  bool pad_zeros = false;  // stacks reaching before an episode's start: zero frames, not its first
  double gamma = 0.99;
  Storage storage = Storage::Episode;
  uint64_t seed = 0;
};

// Per-slot metadata, at the start of every record.
struct SlotHeader {
  int64_t ep_first;  // position of the episode's first observation
  int64_t ep_end;    // episode mode: position of its final observation; transition mode: one past
                     // its last step. kOpen while the episode is still running.
  float reward;
  uint32_t flags;  // kHasStep | kTerminated
};
static_assert(sizeof(SlotHeader) == 24, "SlotHeader layout is part of the saved format");

constexpr int64_t kOpen = INT64_MAX;
constexpr uint32_t kHasStep = 1u;
constexpr uint32_t kTerminated = 2u;

// Per env stream counters; saved with the slots.
struct StreamState {
  int64_t count = 0;      // positions written so far
  int64_t cur_first = 0;  // first position of the running episode (valid when open)
  int64_t steps = 0;      // steps (slots with kHasStep) currently held
  int64_t open = 0;       // 1 while an episode is running
};
constexpr int kStreamStateWords = 4;

// Where sample() writes. All arrays are C-contiguous with `batch` rows.
struct SampleOut {
  uint8_t* obs;        // batch x frame_stack x frame_bytes
  uint8_t* next_obs;   // batch x frame_stack x frame_bytes
  float* action;       // batch x action_dim
  float* reward;       // batch
  float* discount;     // batch
};

class ReplayCore {
 public:
  // `path`: keep the slots in that file (created, or reopened: see MappedFile) instead of
  // memory. A reopened file's slots are there, but nothing is held until state is set.
  explicit ReplayCore(const ReplayConfig& config, const std::string& path = "");

  // `steps` consecutive steps of the streams listed in `streams` (`count` distinct indices):
  // arrays hold steps x count rows, row (t, i) being step t of stream streams[i]. Rows must
  // already be validated; the core re-checks what could corrupt its memory (indices included)
  // before it writes anything, then writes under one hold of the lock.
  void add_steps(const int64_t* streams, int64_t count, int64_t steps, const uint8_t* obs,
                 const float* action, const float* reward, const uint8_t* next_obs,
                 const uint8_t* terminated, const uint8_t* truncated);

  // Ends every stream's running episode as truncated at its last observation, so that the
  // next add() starts a new episode even when its obs equals that observation.
  // End the running episodes of `streams` (all streams when null) as truncated.
  void end_episodes(const int64_t* streams = nullptr, int64_t count = 0);

  // Draws `batch` sampleable steps uniformly (with replacement) and gathers them into `out`.
  // Releases nothing: the caller decides about the GIL. Throws std::invalid_argument if fewer
  // than `batch` steps are sampleable.
  void sample(int64_t batch, const SampleOut& out, int num_threads);

  int64_t size() const;            // steps held
  int64_t num_sampleable() const;  // steps sample() can return
  int64_t capacity() const { return cfg_.num_envs * cfg_.ring; }
  int64_t nbytes() const { return static_cast<int64_t>(slots_bytes_); }
  int64_t stride() const { return stride_; }
  int64_t frame_offset() const { return frame_offset_; }  // of the frame(s) in a record
  const ReplayConfig& config() const { return cfg_; }

  // State for save/load. The slots are exposed as one block of raw bytes.
  uint8_t* slots_data() { return data_; }
  size_t slots_bytes() const { return slots_bytes_; }
  std::vector<int64_t> stream_state() const;
  void set_stream_state(const std::vector<int64_t>& words);  // validates, then applies
  // Per stream, the (offset, bytes) of the slots it has written: a ring fills from its start,
  // so they are a prefix of its ring, and a save writes only these.
  std::vector<std::pair<int64_t, int64_t>> written_spans() const;
  // Checks that every held header is consistent with the stream counters, so that restored
  // (possibly corrupt) state cannot make add() or sample() reach outside the slots or a
  // step's episode. Throws std::invalid_argument.
  void check_integrity() const;
  Rng::State rng_state() const;
  void set_rng_state(const Rng::State& s);  // rejects the all-zero state (a fixed point)

  // Per stream, the first position that may still be held: positions before it are lost
  // (0 unless a resume found slots overwritten after its checkpoint). Saved with the state.
  std::vector<int64_t> floors() const;
  void set_floors(const std::vector<int64_t>& floors);  // validates, then applies
  // File-backed: after the state of a checkpoint is set, finds the slots written since then
  // (their stamps name later positions), treats them and everything older in their stream as
  // lost (raising the stream's floor), and undoes what later steps changed in the headers of
  // the episode that was running then. Returns the positions lost.
  // `generation`: the file's lineage when the state was saved (see MappedFile); if the file
  // has started another one since, every position is lost. Throws std::invalid_argument, with
  // the file and the core as they were, where the result is not a consistent state.
  int64_t drop_overwritten(uint64_t generation);
  // The lineage this core writes under: a fresh one until drop_overwritten() adopts the
  // checkpoint's; the file takes it at the first write.
  uint64_t generation() const { return generation_; }
  bool file_backed() const { return file_ != nullptr; }
  void flush() const;  // file-backed: every slot on the disk (msync); else nothing
  // Frees the slots (file-backed: unmaps the file and releases its lock). Every method but
  // the destructor then throws.
  void close();
  // Held by every public method; recursive so that a caller holding it (a consistent save)
  // can still call them.
  std::recursive_mutex& mutex() { return mutex_; }

 private:
  // Record accessors; `pos` is an absolute position of stream `env`.
  uint8_t* record(int64_t env, int64_t pos) const {
    return data_ + (env * cfg_.ring + pos % cfg_.ring) * stride_;
  }
  SlotHeader* header(int64_t env, int64_t pos) const {
    return reinterpret_cast<SlotHeader*>(record(env, pos));
  }
  float* action_of(int64_t env, int64_t pos) const {
    return reinterpret_cast<float*>(record(env, pos) + sizeof(SlotHeader));
  }
  uint8_t* frame_of(int64_t env, int64_t pos) const { return record(env, pos) + frame_offset_; }
  uint8_t* next_frame_of(int64_t env, int64_t pos) const {
    return record(env, pos) + frame_offset_ + cfg_.frame_bytes;
  }
  int64_t oldest(int64_t env) const {
    const int64_t c = streams_[env].count;
    return std::max(c > cfg_.ring ? c - cfg_.ring : 0, floor_[env]);
  }
  // Last observation position usable as a next observation in a running episode.
  int64_t avail_end(int64_t env) const {
    return cfg_.storage == Storage::Episode ? streams_[env].count - 1 : streams_[env].count;
  }

  int64_t open_slot(int64_t env, int64_t ep_first);  // writes a fresh header, returns position
  void close_episode(int64_t env, int64_t ep_end);
  void add_episode(int64_t env, const uint8_t* obs, const float* action, float reward,
                   const uint8_t* next_obs, bool terminated, bool truncated);
  void add_transition(int64_t env, const uint8_t* obs, const float* action, float reward,
                      const uint8_t* next_obs, bool terminated, bool truncated);

  // A held position of one stream, with its slot (pos % ring) computed once.
  struct Draw {
    int64_t env;
    int64_t pos;
    int64_t slot;
  };
  // What the sampler needs of a stream, computed once per sample() call.
  struct Span {
    int64_t oldest;       // first held position
    int64_t held;         // positions held
    int64_t oldest_slot;  // oldest % ring
    int64_t avail_end;
  };

  bool step_ok(const SlotHeader& h, int64_t pos, const Span& span) const;
  Span span_of(int64_t env) const;
  bool sampleable(int64_t env, int64_t pos) const;
  int64_t num_sampleable_locked() const;
  void gather_one(const Draw& d, int64_t row, const SampleOut& out) const;
  template <class RecordOf>
  void advise_cold_draws(const RecordOf& record_of) const;

  ReplayConfig cfg_;
  int64_t frame_offset_ = 0;
  int64_t stride_ = 0;
  size_t slots_bytes_ = 0;
  std::unique_ptr<Memory> memory_;   // the slots in memory, or
  std::unique_ptr<MappedFile> file_;  // in a file
  uint8_t* data_ = nullptr;           // the slots
  int64_t* stamps_ = nullptr;         // file-backed: per slot, the position written there
  uint64_t generation_ = 0;           // file-backed: see generation()
  std::vector<StreamState> streams_;
  std::vector<int64_t> floor_;        // per stream, see floors()
  std::vector<Draw> draws_;  // scratch reused by sample()
  std::vector<Span> spans_;     // scratch reused by sample()
  std::vector<int64_t> ends_;   // scratch: prefix sums of spans_[e].held
  Rng rng_;
  mutable std::recursive_mutex mutex_;
};

}  // namespace fastsac
