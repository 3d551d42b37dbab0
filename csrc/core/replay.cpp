// Construction (the block of slots), writing with add(), and the state used by save/load.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <stdexcept>
#include <string>

#include "replay.hpp"

namespace fastsac {
namespace {

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

constexpr int64_t kMaxField = int64_t{1} << 40;  // bytes of an obs, floats of an action
constexpr int64_t kMaxCount = int64_t{1} << 62;  // positions written per stream

// True when every IEEE float of `bytes` bytes in [p, p + n) is finite (exponent not all ones).
template <typename Bits>
bool all_finite(const uint8_t* p, int64_t n, Bits exponent) {
  for (int64_t i = 0; i + static_cast<int64_t>(sizeof(Bits)) <= n; i += sizeof(Bits)) {
    Bits v;
    std::memcpy(&v, p + i, sizeof(Bits));
    if ((v & exponent) == exponent) return false;
  }
  return true;
}

bool frames_finite(const uint8_t* p, int64_t n, int64_t float_bytes) {
  switch (float_bytes) {
    case 2: return all_finite<uint16_t>(p, n, 0x7C00u);
    case 4: return all_finite<uint32_t>(p, n, 0x7F800000u);
    case 8: return all_finite<uint64_t>(p, n, 0x7FF0000000000000ull);
    default: return true;
  }
}

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

ReplayCore::ReplayCore(const ReplayConfig& config, const std::string& path)
    : cfg_(config), streams_(config.num_envs), floor_(config.num_envs, 0), rng_(config.seed) {
  require(cfg_.num_envs >= 1, "num_envs must be >= 1");
  require(cfg_.ring >= (cfg_.storage == Storage::Episode ? 2 : 1),
          "capacity per env must be >= 2 for episode storage (>= 1 for transition storage)");
  require(cfg_.frame_bytes >= 1, "frame_bytes must be >= 1");
  require(cfg_.action_dim >= 0, "action_dim must be >= 0");
  require(cfg_.frame_stack >= 1, "frame_stack must be >= 1");
  require(cfg_.n_step >= 1, "n_step must be >= 1");
  require(cfg_.gamma >= 0.0 && cfg_.gamma <= 1.0, "gamma must be in [0, 1]");
  require(cfg_.obs_float_bytes == 0 || cfg_.obs_float_bytes == 2 || cfg_.obs_float_bytes == 4 ||
              cfg_.obs_float_bytes == 8,
          "obs_float_bytes must be 0, 2, 4 or 8");

  // Bounds that keep every size and position below in int64 (positions count up to kMaxCount).
  require(cfg_.action_dim <= kMaxField && cfg_.frame_bytes <= kMaxField,
          "action or observation too large");
  const int64_t frames = cfg_.storage == Storage::Episode ? 1 : 2;
  frame_offset_ =
      round_up(static_cast<int64_t>(sizeof(SlotHeader)) + kFloatBytes * cfg_.action_dim, 16);
  stride_ = round_up(frame_offset_ + frames * cfg_.frame_bytes, 16);
  const int64_t num_slots = cfg_.num_envs * cfg_.ring;
  require(num_slots <= std::numeric_limits<int64_t>::max() / stride_, "capacity too large");
  slots_bytes_ = static_cast<size_t>(num_slots) * static_cast<size_t>(stride_);
  if (!path.empty()) {
    const FileLayout layout{cfg_.num_envs, cfg_.ring,        stride_,
                            cfg_.frame_bytes, cfg_.action_dim, static_cast<int64_t>(cfg_.storage)};
    file_ = std::make_unique<MappedFile>(path, layout, slots_bytes_);
    data_ = file_->slots();
    stamps_ = file_->stamps();
    std::random_device device;
    generation_ = ((static_cast<uint64_t>(device()) << 32) ^ device()) | 1u;  // never 0
    return;
  }
  // Zeroed lazily: a large buffer costs memory as it fills; a save never holds garbage.
  memory_ = std::make_unique<Memory>(slots_bytes_);
  data_ = memory_->data();
}

int64_t ReplayCore::open_slot(int64_t env, int64_t ep_first) {
  StreamState& st = streams_[env];
  const int64_t pos = st.count;
  SlotHeader* h = header(env, pos);
  if (pos >= cfg_.ring && (h->flags & kHasStep)) --st.steps;  // overwriting the oldest step
  h->ep_first = ep_first;
  h->ep_end = kOpen;
  h->reward = 0.0f;
  h->flags = 0;
  if (stamps_) {
    if (file_->generation() != generation_) file_->set_generation(generation_);
    stamps_[env * cfg_.ring + pos % cfg_.ring] = pos;
  }
  ++st.count;
  return pos;
}

void ReplayCore::close_episode(int64_t env, int64_t ep_end) {
  StreamState& st = streams_[env];
  const int64_t lo = std::max(st.cur_first, oldest(env));
  for (int64_t pos = st.count - 1; pos >= lo; --pos) header(env, pos)->ep_end = ep_end;
  st.open = 0;
}

void ReplayCore::add_episode(int64_t env, const uint8_t* obs, const float* action, float reward,
                             const uint8_t* next_obs, bool terminated, bool truncated) {
  StreamState& st = streams_[env];
  int64_t pos;
  if (st.open && std::memcmp(frame_of(env, st.count - 1), obs, cfg_.frame_bytes) == 0) {
    pos = st.count - 1;  // obs is the previous step's next_obs: share it
  } else {
    // A new episode. If one was running and obs does not continue it, it ended without a
    // flag: keep its steps and treat it as truncated at its last observation.
    if (st.open) close_episode(env, st.count - 1);
    pos = open_slot(env, st.count);
    st.cur_first = pos;
    st.open = 1;
    std::memcpy(frame_of(env, pos), obs, cfg_.frame_bytes);
  }
  SlotHeader* h = header(env, pos);
  h->reward = reward;
  h->flags = kHasStep | (terminated ? kTerminated : 0u);
  std::memcpy(action_of(env, pos), action, kFloatBytes * cfg_.action_dim);
  ++st.steps;

  const int64_t next = open_slot(env, st.cur_first);
  std::memcpy(frame_of(env, next), next_obs, cfg_.frame_bytes);
  if (terminated || truncated) close_episode(env, next);
}

void ReplayCore::add_transition(int64_t env, const uint8_t* obs, const float* action, float reward,
                                const uint8_t* next_obs, bool terminated, bool truncated) {
  StreamState& st = streams_[env];
  if (!st.open) {
    st.cur_first = st.count;
    st.open = 1;
  }
  const int64_t pos = open_slot(env, st.cur_first);
  SlotHeader* h = header(env, pos);
  h->reward = reward;
  h->flags = kHasStep | (terminated ? kTerminated : 0u);
  std::memcpy(action_of(env, pos), action, kFloatBytes * cfg_.action_dim);
  std::memcpy(frame_of(env, pos), obs, cfg_.frame_bytes);
  std::memcpy(next_frame_of(env, pos), next_obs, cfg_.frame_bytes);
  ++st.steps;
  if (terminated || truncated) close_episode(env, pos + 1);
}

void ReplayCore::end_episodes(const int64_t* streams, int64_t count) {
  std::vector<bool> chosen(static_cast<size_t>(cfg_.num_envs), streams == nullptr);
  for (int64_t i = 0; streams != nullptr && i < count; ++i) {
    require(streams[i] >= 0 && streams[i] < cfg_.num_envs,
            "streams must be indices of env streams");
    chosen[streams[i]] = true;
  }
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  for (int64_t env = 0; env < cfg_.num_envs; ++env) {
    const StreamState& st = streams_[env];
    // The episode's last observation: the slot last written (episode storage), or the
    // next_obs of the last transition, one past it (transition storage).
    if (chosen[env] && st.open)
      close_episode(env, cfg_.storage == Storage::Episode ? st.count - 1 : st.count);
  }
}

void ReplayCore::add_steps(const int64_t* streams, int64_t count, int64_t steps,
                           const uint8_t* obs, const float* action, const float* reward,
                           const uint8_t* next_obs, const uint8_t* terminated,
                           const uint8_t* truncated) {
  // Check everything before writing anything, so a rejected call changes nothing.
  require(count >= 1 && count <= cfg_.num_envs && steps >= 1, "no rows to add");
  std::vector<bool> seen(static_cast<size_t>(cfg_.num_envs), false);
  for (int64_t i = 0; i < count; ++i) {
    require(streams[i] >= 0 && streams[i] < cfg_.num_envs && !seen[streams[i]],
            "streams must be distinct indices of env streams");
    seen[streams[i]] = true;
  }
  const int64_t rows = steps * count;
  const int64_t frames_bytes = rows * cfg_.frame_bytes;
  require(frames_finite(obs, frames_bytes, cfg_.obs_float_bytes),
          "obs must be finite (no NaN or inf)");
  require(frames_finite(next_obs, frames_bytes, cfg_.obs_float_bytes),
          "next_obs must be finite (no NaN or inf)");
  for (int64_t r = 0; r < rows; ++r) {
    require(std::isfinite(reward[r]), "reward must be finite");
    for (int64_t i = 0; i < cfg_.action_dim; ++i)
      require(std::isfinite(action[r * cfg_.action_dim + i]), "action must be finite");
  }
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  require(data_ != nullptr, "the buffer is closed");
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t e = streams[r % count];
    const uint8_t* o = obs + r * cfg_.frame_bytes;
    const uint8_t* no = next_obs + r * cfg_.frame_bytes;
    const float* a = action + r * cfg_.action_dim;
    if (cfg_.storage == Storage::Episode)
      add_episode(e, o, a, reward[r], no, terminated[r] != 0, truncated[r] != 0);
    else
      add_transition(e, o, a, reward[r], no, terminated[r] != 0, truncated[r] != 0);
  }
}

int64_t ReplayCore::size() const {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  int64_t n = 0;
  for (const auto& st : streams_) n += st.steps;
  return n;
}

std::vector<int64_t> ReplayCore::stream_state() const {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  std::vector<int64_t> words;
  words.reserve(streams_.size() * kStreamStateWords);
  for (const auto& st : streams_)
    words.insert(words.end(), {st.count, st.cur_first, st.steps, st.open});
  return words;
}

void ReplayCore::set_stream_state(const std::vector<int64_t>& words) {
  require(words.size() == streams_.size() * kStreamStateWords, "stream state has the wrong size");
  for (size_t e = 0; e < streams_.size(); ++e) {
    const int64_t* w = &words[e * kStreamStateWords];
    const int64_t held = std::min(w[0], cfg_.ring);
    require(w[0] >= 0 && w[0] <= kMaxCount && w[1] >= 0 && w[1] <= w[0] && w[2] >= 0 &&
                w[2] <= held && (w[3] == 0 || w[3] == 1) && (!w[3] || w[0] > w[1]),
            "stream state is inconsistent");
  }
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  std::fill(floor_.begin(), floor_.end(), 0);  // set_floors() after this, if any
  for (size_t e = 0; e < streams_.size(); ++e) {
    const int64_t* w = &words[e * kStreamStateWords];
    streams_[e] = StreamState{w[0], w[1], w[2], w[3]};
  }
}

std::vector<std::pair<int64_t, int64_t>> ReplayCore::written_spans() const {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  std::vector<std::pair<int64_t, int64_t>> spans;
  spans.reserve(streams_.size());
  for (int64_t e = 0; e < cfg_.num_envs; ++e)
    spans.emplace_back(e * cfg_.ring * stride_, std::min(streams_[e].count, cfg_.ring) * stride_);
  return spans;
}

void ReplayCore::check_integrity() const {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  const bool episode = cfg_.storage == Storage::Episode;
  for (int64_t e = 0; e < cfg_.num_envs; ++e) {
    const StreamState& st = streams_[e];
    int64_t steps = 0;
    for (int64_t pos = oldest(e); pos < st.count; ++pos) {
      const SlotHeader* h = header(e, pos);
      const bool step = (h->flags & kHasStep) != 0;
      steps += step;
      bool ok = h->flags <= (kHasStep | kTerminated) && h->ep_first >= 0 && h->ep_first <= pos;
      if (h->ep_end == kOpen)
        ok = ok && st.open && h->ep_first == st.cur_first;
      else
        ok = ok && h->ep_end <= avail_end(e) && (step ? h->ep_end > pos : h->ep_end >= pos);
      ok = ok && (step || (episode && !(h->flags & kTerminated)));
      if (!ok)
        throw std::invalid_argument("replay state is corrupt at env " + std::to_string(e) +
                                    ", position " + std::to_string(pos));
    }
    if (steps != st.steps) throw std::invalid_argument("replay state is corrupt: step count");
    // A running episode ends at the stream's last slot: in episode storage that slot is its
    // latest observation, which the next add() continues from (so it holds no step yet).
    if (st.open) {
      const SlotHeader* last = header(e, st.count - 1);
      if (last->ep_end != kOpen || (episode && (last->flags & kHasStep)))
        throw std::invalid_argument("replay state is corrupt: running episode of env " +
                                    std::to_string(e));
    }
  }
}

std::vector<int64_t> ReplayCore::floors() const {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  return floor_;
}

void ReplayCore::set_floors(const std::vector<int64_t>& floors) {
  require(floors.size() == streams_.size(), "floors has the wrong size");
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  for (size_t e = 0; e < streams_.size(); ++e)
    require(floors[e] >= 0 && floors[e] <= streams_[e].count, "floors are inconsistent");
  floor_ = floors;
}

int64_t ReplayCore::drop_overwritten(uint64_t generation) {
  require(stamps_ != nullptr, "drop_overwritten needs a file-backed core");
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  const bool episode = cfg_.storage == Storage::Episode;
  // What this changes in the file, to put back if the result is not a consistent state: a
  // damaged checkpoint must not damage the slots an older one resumes from.
  struct Saved {
    SlotHeader* header;
    SlotHeader before;
    int64_t* stamp;
    int64_t stamp_before;
  };
  std::vector<Saved> undo;
  auto save = [&](int64_t e, int64_t pos) {
    int64_t* stamp = &stamps_[e * cfg_.ring + pos % cfg_.ring];
    undo.push_back({header(e, pos), *header(e, pos), stamp, *stamp});
  };
  const std::vector<StreamState> streams_before = streams_;
  const std::vector<int64_t> floor_before = floor_;
  const uint64_t generation_before = generation_;
  // Another lineage wrote the file since (a fresh buffer on it): nothing of ours is left.
  const bool foreign = file_->generation() != generation;
  generation_ = generation;
  int64_t lost = 0;
  try {
    for (int64_t e = 0; e < cfg_.num_envs; ++e) {
      StreamState& st = streams_[e];
      const int64_t lo = oldest(e);
      int64_t floor = foreign ? st.count : lo;  // one past the newest position overwritten
      for (int64_t pos = lo; pos < st.count && !foreign; ++pos) {
        const int64_t stamp = stamps_[e * cfg_.ring + pos % cfg_.ring];
        // Older data than the state says was written (-1: dropped by an earlier resume).
        if (stamp >= 0 && stamp < pos)
          throw std::invalid_argument("replay state is corrupt: it is ahead of the file at env " +
                                      std::to_string(e) + ", position " + std::to_string(pos));
        if (stamp != pos) floor = pos + 1;
      }
      for (int64_t pos = lo; pos < floor && !foreign; ++pos) {  // not held: nothing to count
        save(e, pos);
        header(e, pos)->flags = 0;
        stamps_[e * cfg_.ring + pos % cfg_.ring] = -1;
      }
      lost += floor - lo;
      floor_[e] = floor;
      if (st.open && floor >= st.count) st.open = 0;  // its last observation is gone too
      if (st.open) {
        // Later steps may have continued or ended the episode running then: it runs again.
        for (int64_t pos = std::max(st.cur_first, floor); pos < st.count; ++pos) {
          save(e, pos);
          header(e, pos)->ep_end = kOpen;
        }
        if (episode) {  // its last observation had no step yet
          save(e, st.count - 1);
          header(e, st.count - 1)->flags = 0;
          header(e, st.count - 1)->reward = 0.0f;
        }
      }
      st.steps = 0;
      for (int64_t pos = floor; pos < st.count; ++pos)
        st.steps += (header(e, pos)->flags & kHasStep) != 0;
    }
    check_integrity();
  } catch (...) {
    for (auto it = undo.rbegin(); it != undo.rend(); ++it) {  // a slot saved twice: oldest last
      *it->header = it->before;
      *it->stamp = it->stamp_before;
    }
    streams_ = streams_before;
    floor_ = floor_before;
    generation_ = generation_before;
    throw;
  }
  return lost;
}

void ReplayCore::flush() const {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (file_) file_->flush();
}

void ReplayCore::close() {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  file_.reset();
  memory_.reset();
  data_ = nullptr;
  stamps_ = nullptr;
}

Rng::State ReplayCore::rng_state() const {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  return rng_.state();
}

void ReplayCore::set_rng_state(const Rng::State& s) {
  require(s[0] | s[1] | s[2] | s[3], "rng state must not be all zero");
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  rng_.set_state(s);
}

}  // namespace fastsac
