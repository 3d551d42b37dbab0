// The _core extension: module.cpp only dispatches to the register_* functions.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_replay(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastsac's compiled replay-memory core (private; use fastsac.ReplayBuffer)";
  register_replay(m);
}
