// Sampling: which steps are sampleable, the uniform draw, and the gather that builds frame
// stacks and n-step returns.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "replay.hpp"

namespace fastsac {
namespace {

// Vector rows are tens of bytes: inline 16-byte moves (overlapping at the tail) beat a libc
// call per field. Frames of images go to memcpy.
inline void copy_bytes(uint8_t* dst, const uint8_t* src, int64_t n) {
#if defined(__SSE2__)
  // Image frames: a batch (tens of MB) does not fit in cache, so write around it. Streaming
  // stores skip the read-for-ownership of every destination line. SSE2 is baseline x86-64.
  if (n >= 4096 && ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                     static_cast<uintptr_t>(n)) & 15) == 0) {
    auto* d = reinterpret_cast<__m128i*>(dst);
    auto* s = reinterpret_cast<const __m128i*>(src);
    for (int64_t i = 0; i < n / 16; ++i) _mm_stream_si128(d + i, _mm_load_si128(s + i));
    return;
  }
#endif
  if (n > 256 || n < 16) {
    std::memcpy(dst, src, static_cast<size_t>(n));
    return;
  }
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) std::memcpy(dst + i, src + i, 16);
  if (i < n) std::memcpy(dst + n - 16, src + n - 16, 16);
}

}  // namespace

ReplayCore::Span ReplayCore::span_of(int64_t env) const {
  const int64_t lo = oldest(env);
  return Span{lo, streams_[env].count - lo, lo % cfg_.ring, avail_end(env)};
}

bool ReplayCore::step_ok(const SlotHeader& h, int64_t pos, const Span& span) const {
  if (!(h.flags & kHasStep)) return false;
  // The stack reaches back to max(ep_first, pos - frame_stack + 1): it must still be held.
  if (pos - (cfg_.frame_stack - 1) < span.oldest && h.ep_first < span.oldest) return false;
  // A running episode: only complete n-step windows (no guessing how it continues).
  if (h.ep_end == kOpen) return pos + cfg_.n_step <= span.avail_end;
  return true;
}

bool ReplayCore::sampleable(int64_t env, int64_t pos) const {
  return step_ok(*header(env, pos), pos, span_of(env));
}

int64_t ReplayCore::num_sampleable_locked() const {
  // Every held step is sampleable except, possibly, the first frame_stack - 1 held positions
  // (stack partly overwritten) and the last n_step + 1 positions (window incomplete).
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
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  return num_sampleable_locked();
}

// Inlined into the sampling loop: a vector row is a few short copies, so the overhead of a
// call per row is a visible share of sampling a vector batch.
__attribute__((always_inline)) inline void ReplayCore::gather_one(const Draw& d, int64_t row,
                                                                 const SampleOut& out) const {
  // Everything in locals: the memcpy's below could alias members, which would force reloads.
  const int64_t ring = cfg_.ring, stride = stride_, fo = frame_offset_;
  const int64_t k = cfg_.frame_stack, fb = cfg_.frame_bytes, n = cfg_.n_step;
  const int64_t adim = cfg_.action_dim, pos = d.pos, slot = d.slot;
  const double gamma = cfg_.gamma;
  const bool transition = cfg_.storage == Storage::Transition;
  const uint8_t* const base = data_ + d.env * ring * stride;
  // Neighbouring records by slot arithmetic, without a division each.
  auto rec = [=](int64_t p) {
    int64_t s = slot + (p - pos);
    if (s >= ring) s -= ring;
    else if (s < 0) s += ring;
    return base + s * stride;
  };
  auto hdr = [=](int64_t p) { return reinterpret_cast<const SlotHeader*>(rec(p)); };

  const SlotHeader h = *hdr(pos);
  if (k == 1 && n == 1) {  // the common vector case, without the loops
    const bool term = (h.flags & kTerminated) != 0;
    out.reward[row] = h.reward;
    out.discount[row] = term ? 0.0f : static_cast<float>(gamma);
    const uint8_t* r = rec(pos);
    copy_bytes(reinterpret_cast<uint8_t*>(out.action + row * adim), r + sizeof(SlotHeader),
               kFloatBytes * adim);
    copy_bytes(out.obs + row * fb, r + fo, fb);
    copy_bytes(out.next_obs + row * fb, transition ? r + fo + fb : rec(pos + 1) + fo, fb);
    return;
  }
  const int64_t m = h.ep_end == kOpen ? n : std::min(n, h.ep_end - pos);

  // n-step return, summed in double; discount 0 if the window ends in a termination.
  double ret = h.reward, g = gamma;
  for (int64_t j = 1; j < m; ++j) {
    ret += g * hdr(pos + j)->reward;
    g *= gamma;
  }
  const bool terminated = ((m == 1 ? h.flags : hdr(pos + m - 1)->flags) & kTerminated) != 0;
  out.reward[row] = static_cast<float>(ret);
  out.discount[row] = terminated ? 0.0f : static_cast<float>(g);
  copy_bytes(reinterpret_cast<uint8_t*>(out.action + row * adim), rec(pos) + sizeof(SlotHeader),
             kFloatBytes * adim);

  // Stacks repeat the episode's first frame where the episode is shorter than the stack (or,
  // with pad_zeros, hold zero frames there, as SB3's VecFrameStack does).
  const bool zeros = cfg_.pad_zeros;
  uint8_t* const o = out.obs + row * k * fb;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t f = pos - (k - 1) + j;
    if (zeros && f < h.ep_first)
      std::memset(o + j * fb, 0, static_cast<size_t>(fb));
    else
      copy_bytes(o + j * fb, rec(std::max(h.ep_first, f)) + fo, fb);
  }
  const int64_t next = pos + m;
  uint8_t* const no = out.next_obs + row * k * fb;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t raw = next - (k - 1) + j;
    if (zeros && raw < h.ep_first) {
      std::memset(no + j * fb, 0, static_cast<size_t>(fb));
      continue;
    }
    const int64_t f = std::max(h.ep_first, raw);
    const uint8_t* src = (transition && f == next) ? rec(next - 1) + fo + fb : rec(f) + fo;
    copy_bytes(no + j * fb, src, fb);
  }
}

template <class RecordOf>
void ReplayCore::advise_cold_draws(const RecordOf& record_of) const {
  // Where the file is not in the page cache, each draw would fault its slots in one read at a
  // time (validation reads the headers serially): ask for all of them first, so that the disk
  // reads them together. A few resident draws mean a cached file: no hints, no syscalls. The
  // probe is the middle of a record, away from the headers a resume's integrity check reads.
  const size_t probes = std::min<size_t>(draws_.size(), 4);
  bool cold = false;
  for (size_t i = 0; i < probes && !cold; ++i)
    cold = !file_->resident(record_of(draws_[i]) + stride_ / 2);
  if (!cold) return;
  const int64_t before = cfg_.frame_stack - 1;  // the stack's earlier frames
  const int64_t after = cfg_.n_step;            // the n-step window, to next_obs
  for (const Draw& d : draws_) {
    const int64_t lo = std::max<int64_t>(0, d.slot - before);
    const int64_t hi = std::min<int64_t>(cfg_.ring - 1, d.slot + after);
    file_->will_need(data_ + (d.env * cfg_.ring + lo) * stride_,
                     static_cast<size_t>((hi - lo + 1) * stride_));
  }
}

void ReplayCore::sample(int64_t batch, const SampleOut& out, int num_threads) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (data_ == nullptr) throw std::invalid_argument("the buffer is closed");
  const int64_t available = num_sampleable_locked();
  if (batch < 1 || batch > available)
    throw std::invalid_argument("batch_size " + std::to_string(batch) + " is larger than the " +
                                std::to_string(available) + " steps that can be sampled now");

  // Uniform over held positions, rejecting those that are not sampleable: uniform over
  // sampleable steps. Draws happen serially, so results do not depend on the thread count.
  const int64_t envs = cfg_.num_envs;
  spans_.resize(static_cast<size_t>(envs));
  ends_.resize(static_cast<size_t>(envs));
  int64_t held = 0;
  for (int64_t e = 0; e < envs; ++e) ends_[e] = held += (spans_[e] = span_of(e)).held;
  // The stream a draw falls in: full rings (the usual case) hold equally many positions, so a
  // division finds it; otherwise a binary search of the prefix sums.
  const int64_t each = spans_[0].held;
  bool equal = true;
  for (int64_t e = 1; e < envs; ++e) equal = equal && spans_[e].held == each;
  auto draw = [&]() {
    int64_t r = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(held)));
    int64_t e = 0;
    if (envs > 1) {
      e = equal ? r / each
                : std::upper_bound(ends_.begin(), ends_.end(), r) - ends_.begin();
      r -= e ? ends_[e - 1] : 0;
    }
    int64_t slot = spans_[e].oldest_slot + r;
    if (slot >= cfg_.ring) slot -= cfg_.ring;
    return Draw{e, spans_[e].oldest + r, slot};
  };
  auto record_of = [&](const Draw& d) {
    return data_ + (d.env * cfg_.ring + d.slot) * stride_;
  };
  // Draw all first, touching each header line: the address translations (page walks) of all
  // draws then overlap instead of each one stalling its validation.
  draws_.resize(static_cast<size_t>(batch));
  for (auto& d : draws_) {
    d = draw();
    __builtin_prefetch(record_of(d));
  }
  if (file_) advise_cold_draws(record_of);

  // Then prefetch a fixed distance ahead so the cache misses of many draws overlap. Small records
  // (vectors): the step's and the next step's whole records; large ones (images): the header.
  const int64_t span = stride_ <= 256 ? 2 * stride_ : 1;
  auto prefetch = [&](const Draw& d) {
    const uint8_t* r = record_of(d);
    for (int64_t off = 0; off < span; off += 64) __builtin_prefetch(r + off);
  };
  constexpr int64_t kAhead = 16;
  for (int64_t i = 0; i < std::min(batch, kAhead); ++i) prefetch(draws_[i]);
  auto ok = [&](const Draw& d) {
    return step_ok(*reinterpret_cast<const SlotHeader*>(record_of(d)), d.pos, spans_[d.env]);
  };
  // Rejections are rare: keep them (and the guard against a broken invariant, since at least
  // `batch` steps are sampleable) out of the hot loop's code.
  int64_t rejected = 0;
  const int64_t max_rejected = 1000 * batch + 1000000;
  auto redraw = [&](Draw& d) __attribute__((noinline, cold)) {
    do {
      if (++rejected > max_rejected)
        throw std::runtime_error("fastsac: no sampleable step found (internal error)");
      d = draw();
    } while (!ok(d));
  };
  auto validate = [&](int64_t i) {
    if (i + kAhead < batch) prefetch(draws_[i + kAhead]);
    if (!ok(draws_[i])) redraw(draws_[i]);
  };

  // Small batches (vectors) are latency-bound: validate and gather each draw in one pass while
  // its record is in L1. Large ones (images): validate all, then gather rows in threads.
  const int64_t bytes = batch * 2 * cfg_.frame_stack * cfg_.frame_bytes;
  const int threads = bytes >= (int64_t{1} << 20)
                          ? static_cast<int>(std::min<int64_t>(std::max(1, num_threads), batch))
                          : 1;
  if (threads == 1) {
    for (int64_t i = 0; i < batch; ++i) {
      validate(i);
      gather_one(draws_[i], i, out);
    }
#if defined(__SSE2__)
    _mm_sfence();
#endif
    return;
  }
  for (int64_t i = 0; i < batch; ++i) validate(i);
  auto work = [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) gather_one(draws_[i], i, out);
#if defined(__SSE2__)
    _mm_sfence();  // streaming stores are visible before the batch is handed back
#endif
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (batch + threads - 1) / threads;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back(work, std::min(batch, t * chunk), std::min(batch, (t + 1) * chunk));
  work(0, std::min(batch, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace fastsac
