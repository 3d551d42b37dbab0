// pybind11 glue for fastsac::ReplayCore. Python (fastsac/buffers.py) validates and casts user
// input; this layer only checks that array sizes cannot overrun memory, and drops the GIL
// around every loop over a batch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>

#include "replay.hpp"

namespace py = pybind11;
using fastsac::kFloatBytes;
using fastsac::ReplayConfig;
using fastsac::ReplayCore;

namespace {

// A C-contiguous array of exactly `nbytes` bytes and item size `itemsize`.
template <typename T = uint8_t>
T* checked(const py::array& a, int64_t nbytes, int64_t itemsize, const char* name, bool write) {
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  if (static_cast<int64_t>(a.nbytes()) != nbytes || static_cast<int64_t>(a.itemsize()) != itemsize)
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(a.nbytes()) +
                                " bytes, expected " + std::to_string(nbytes));
  if (write && !a.writeable()) throw std::invalid_argument(std::string(name) + " is read-only");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// A C-contiguous float32 array of exactly `count` values.
float* checked_floats(const py::array& a, int64_t count, const char* name, bool write) {
  return checked<float>(a, count * kFloatBytes, kFloatBytes, name, write);
}

// Output arrays for one batch size, checked once and then filled by every sample call: a call
// then passes an int instead of converting and checking five arrays, whose cost is a visible
// share of sampling a small (vector) batch.
struct Staging {
  py::object core_obj;  // keeps the core alive
  ReplayCore* core;
  int64_t batch;
  py::tuple arrays;  // keeps the arrays alive
  fastsac::SampleOut out;

  void fill(int num_threads) {
    py::gil_scoped_release nogil;
    core->sample(batch, out, num_threads);
  }
};

Staging make_staging(py::object core_obj, int64_t batch, const py::array& obs,
                     const py::array& next_obs, const py::array& action, const py::array& reward,
                     const py::array& discount) {
  auto* core = &core_obj.cast<ReplayCore&>();
  const auto& c = core->config();
  if (batch < 1) throw std::invalid_argument("batch_size must be >= 1");
  const int64_t obs_bytes = batch * c.frame_stack * c.frame_bytes;
  fastsac::SampleOut out{
      checked(obs, obs_bytes, obs.itemsize(), "obs", true),
      checked(next_obs, obs_bytes, next_obs.itemsize(), "next_obs", true),
      checked_floats(action, batch * c.action_dim, "action", true),
      checked_floats(reward, batch, "reward", true),
      checked_floats(discount, batch, "discount", true)};
  return Staging{core_obj, core, batch, py::make_tuple(obs, next_obs, action, reward, discount),
                 out};
}

// Holds the core's (recursive) mutex while Python reads its state, e.g. during a save, so a
// concurrent add() waits instead of tearing the snapshot. Waits for it without the GIL.
struct CoreLock {
  py::object core_obj;
  std::unique_lock<std::recursive_mutex> lock;

  void enter() {
    auto& mutex = core_obj.cast<ReplayCore&>().mutex();
    py::gil_scoped_release nogil;
    lock = std::unique_lock<std::recursive_mutex>(mutex);
  }
  void exit(const py::args&) {
    if (lock.owns_lock()) lock.unlock();
  }
};

}  // namespace

void register_replay(py::module_& m) {
  py::class_<CoreLock>(m, "CoreLock")
      .def("__enter__", &CoreLock::enter)
      .def("__exit__", &CoreLock::exit);

  py::class_<Staging>(m, "Staging")
      .def(py::init(&make_staging), py::arg("core"), py::arg("batch"), py::arg("obs"),
           py::arg("next_obs"), py::arg("action"), py::arg("reward"), py::arg("discount"))
      .def("fill", &Staging::fill, py::arg("num_threads") = 1,
           "Sample a batch into the bound arrays, without the GIL.");

  py::class_<ReplayCore>(m, "ReplayCore")
      .def(py::init([](int64_t num_envs, int64_t ring, int64_t frame_bytes, int64_t action_dim,
                       int64_t frame_stack, int64_t n_step, double gamma, bool transition,
                       uint64_t seed, int64_t obs_float_bytes, const std::string& path,
                       bool pad_zeros) {
             ReplayConfig c;
             c.num_envs = num_envs;
             c.ring = ring;
             c.frame_bytes = frame_bytes;
             c.action_dim = action_dim;
             c.frame_stack = frame_stack;
             c.n_step = n_step;
             c.gamma = gamma;
             c.storage = transition ? fastsac::Storage::Transition : fastsac::Storage::Episode;
             c.seed = seed;
             c.obs_float_bytes = obs_float_bytes;
             c.pad_zeros = pad_zeros;
             py::gil_scoped_release nogil;  // creating a large file takes a while
             return new ReplayCore(c, path);
           }),
           py::arg("num_envs"), py::arg("ring"), py::arg("frame_bytes"), py::arg("action_dim"),
           py::arg("frame_stack"), py::arg("n_step"), py::arg("gamma"), py::arg("transition"),
           py::arg("seed"), py::arg("obs_float_bytes") = 0, py::arg("path") = "",
           py::arg("pad_zeros") = false)
      .def(
          "add_steps",
          [](ReplayCore& self, const py::array& streams, int64_t steps, const py::array& obs,
             const py::array& action, const py::array& reward, const py::array& next_obs,
             const py::array& terminated, const py::array& truncated) {
            const auto& c = self.config();
            const int64_t count = static_cast<int64_t>(streams.size());
            const int64_t n = count * steps;
            if (steps < 1 || count < 1) throw std::invalid_argument("no rows to add");
            auto* s = checked<int64_t>(streams, count * 8, 8, "streams", false);
            auto* o = checked(obs, n * c.frame_bytes, obs.itemsize(), "obs", false);
            auto* a = checked_floats(action, n * c.action_dim, "action", false);
            auto* r = checked_floats(reward, n, "reward", false);
            auto* no = checked(next_obs, n * c.frame_bytes, next_obs.itemsize(), "next_obs", false);
            auto* te = checked(terminated, n, 1, "terminated", false);
            auto* tr = checked(truncated, n, 1, "truncated", false);
            py::gil_scoped_release nogil;
            self.add_steps(s, count, steps, o, a, r, no, te, tr);
          },
          "Steps of some streams: arrays of steps x len(streams) rows (validated and cast by "
          "fastsac.ReplayBuffer).")
      .def_property_readonly("size", &ReplayCore::size)
      .def_property_readonly("num_sampleable", &ReplayCore::num_sampleable)
      .def_property_readonly("capacity", &ReplayCore::capacity)
      .def_property_readonly("nbytes", &ReplayCore::nbytes)
      .def_property_readonly("stride", &ReplayCore::stride)
      .def_property_readonly("frame_offset", &ReplayCore::frame_offset)
      .def(
          "slots",
          [](py::object self_obj) {
            auto& self = self_obj.cast<ReplayCore&>();
            // A writable uint8 view of every slot's bytes that keeps the core alive.
            return py::array(py::dtype::of<uint8_t>(),
                             {static_cast<py::ssize_t>(self.slots_bytes())}, {1},
                             self.slots_data(), self_obj);
          },
          "The slots' raw bytes as one uint8 view (for save/load).")
      .def(
          "locked", [](py::object self) { return CoreLock{self, {}}; },
          "A context manager holding the core's lock (same thread only).")
      .def(
          "end_episodes",
          [](ReplayCore& self, const py::object& streams) {
            if (streams.is_none()) {
              py::gil_scoped_release nogil;
              self.end_episodes();
              return;
            }
            const auto a = streams.cast<py::array>();
            const int64_t count = static_cast<int64_t>(a.size());
            auto* s = checked<int64_t>(a, count * 8, 8, "streams", false);
            py::gil_scoped_release nogil;
            self.end_episodes(s, count);
          },
          py::arg("streams") = py::none(),
          "End the running episode of each stream in `streams` (int64 indices; None: every "
          "stream) as truncated at its last observation.")
      .def("check_integrity", &ReplayCore::check_integrity)
      .def("floors", &ReplayCore::floors)
      .def("set_floors", &ReplayCore::set_floors)
      .def("drop_overwritten", &ReplayCore::drop_overwritten, py::arg("generation"),
           py::call_guard<py::gil_scoped_release>(),
           "File-backed: treat the slots written after the state's checkpoint (of the file's "
           "lineage `generation`) as lost; returns how many positions that drops.")
      .def_property_readonly("generation", &ReplayCore::generation)
      .def("flush", &ReplayCore::flush, py::call_guard<py::gil_scoped_release>(),
           "File-backed: write every slot to the disk and wait.")
      .def_property_readonly("file_backed", &ReplayCore::file_backed)
      .def("close", &ReplayCore::close, py::call_guard<py::gil_scoped_release>(),
           "Free the slots (a file: unmap it and release its lock).")
      .def("stream_state", &ReplayCore::stream_state)
      .def("set_stream_state", &ReplayCore::set_stream_state)
      .def("written_spans", &ReplayCore::written_spans,
           "Per stream, (offset, bytes) in slots() of the slots it has written (a prefix of its "
           "ring).")
      .def("rng_state",
           [](const ReplayCore& self) {
             auto s = self.rng_state();
             return std::vector<uint64_t>(s.begin(), s.end());
           })
      .def("set_rng_state", [](ReplayCore& self, const std::vector<uint64_t>& words) {
        fastsac::Rng::State s;
        if (words.size() != s.size())
          throw std::invalid_argument("rng state must have " + std::to_string(s.size()) + " words");
        std::copy(words.begin(), words.end(), s.begin());
        self.set_rng_state(s);
      });
}
