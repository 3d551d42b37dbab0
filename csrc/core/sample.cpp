// Sampling: which steps are sampleable, the uniform draw, and the gather that builds frame
// stacks and n-step returns.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "replay.hpp"

namespace fastsac {

bool ReplayCore::sampleable(int64_t env, int64_t pos) const {
  const SlotHeader* h = header(env, pos);
  if (!(h->flags & kHasStep)) return false;
  // The stack reaches back to max(ep_first, pos - frame_stack + 1): it must still be held.
  if (pos - (cfg_.frame_stack - 1) < oldest(env) && h->ep_first < oldest(env)) return false;
  // A running episode: only complete n-step windows (no guessing how it continues).
  if (h->ep_end == kOpen) return pos + cfg_.n_step <= avail_end(env);
  return true;
}

int64_t ReplayCore::num_sampleable_locked() const {
  // Every held step is sampleable except, possibly, the first frame_stack - 1 held positions
  // (stack partly overwritten) and the last n_step positions (window incomplete).
  int64_t total = 0;
  for (int64_t e = 0; e < cfg_.num_envs; ++e) {
    total += streams_[e].steps;
    const int64_t lo = oldest(e), hi = streams_[e].count;  // held: [lo, hi)
    const int64_t tail_end = std::min(hi, lo + cfg_.frame_stack - 1);
    for (int64_t p = lo; p < tail_end; ++p)
      if ((header(e, p)->flags & kHasStep) && !sampleable(e, p)) --total;
    for (int64_t p = std::max(tail_end, hi - cfg_.n_step - 1); p < hi; ++p)
      if ((header(e, p)->flags & kHasStep) && !sampleable(e, p)) --total;
  }
  return total;
}

int64_t ReplayCore::num_sampleable() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return num_sampleable_locked();
}

void ReplayCore::gather_one(int64_t env, int64_t pos, int64_t row, const SampleOut& out) const {
  const SlotHeader* h = header(env, pos);
  const int64_t k = cfg_.frame_stack;
  const int64_t fb = cfg_.frame_bytes;
  const int64_t m = h->ep_end == kOpen ? cfg_.n_step : std::min(cfg_.n_step, h->ep_end - pos);

  // n-step return, summed in double; discount 0 if the window ends in a termination.
  double ret = 0.0, g = 1.0;
  for (int64_t j = 0; j < m; ++j) {
    ret += g * header(env, pos + j)->reward;
    g *= cfg_.gamma;
  }
  const bool terminated = (header(env, pos + m - 1)->flags & kTerminated) != 0;
  out.reward[row] = static_cast<float>(ret);
  out.discount[row] = terminated ? 0.0f : static_cast<float>(g);
  std::memcpy(out.action + row * cfg_.action_dim, action_of(env, pos), 4 * cfg_.action_dim);

  // Stacks repeat the episode's first frame where the episode is shorter than the stack.
  uint8_t* o = out.obs + row * k * fb;
  for (int64_t j = 0; j < k; ++j)
    std::memcpy(o + j * fb, frame_of(env, std::max(h->ep_first, pos - (k - 1) + j)), fb);
  const int64_t next = pos + m;
  uint8_t* no = out.next_obs + row * k * fb;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t f = std::max(h->ep_first, next - (k - 1) + j);
    const uint8_t* src = (cfg_.storage == Storage::Transition && f == next)
                             ? next_frame_of(env, next - 1)
                             : frame_of(env, f);
    std::memcpy(no + j * fb, src, fb);
  }
}

void ReplayCore::sample(int64_t batch, const SampleOut& out, int num_threads) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t available = num_sampleable_locked();
  if (batch < 1 || batch > available)
    throw std::invalid_argument("batch_size " + std::to_string(batch) + " must be in [1, " +
                                std::to_string(available) + "], the number of sampleable steps");

  // Uniform over held positions, rejecting the few that are not sampleable: uniform over
  // sampleable steps. Draws happen serially, so results do not depend on the thread count.
  int64_t held = 0;
  for (int64_t e = 0; e < cfg_.num_envs; ++e) held += streams_[e].count - oldest(e);
  draws_.resize(static_cast<size_t>(batch));
  for (auto& d : draws_) {
    for (;;) {
      int64_t r = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(held)));
      int64_t e = 0;
      for (;; ++e) {
        const int64_t n = streams_[e].count - oldest(e);
        if (r < n) break;
        r -= n;
      }
      const int64_t pos = oldest(e) + r;
      if (sampleable(e, pos)) {
        d = Draw{e, pos};
        break;
      }
    }
  }

  // Small batches (vectors) are latency-bound: one thread. Large ones (images) split by rows.
  const int64_t bytes = batch * 2 * cfg_.frame_stack * cfg_.frame_bytes;
  int threads = bytes >= (int64_t{1} << 20) ? std::max(1, num_threads) : 1;
  threads = static_cast<int>(std::min<int64_t>(threads, batch));
  auto work = [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) gather_one(draws_[i].env, draws_[i].pos, i, out);
  };
  if (threads == 1) {
    work(0, batch);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (batch + threads - 1) / threads;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back(work, std::min(batch, t * chunk), std::min(batch, (t + 1) * chunk));
  work(0, std::min(batch, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace fastsac
