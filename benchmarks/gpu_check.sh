#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU and a CUDA build of torch, builds fastsac, runs
# the tests of the CUDA path, then `fastsac bench gpu`, which times the CUDA path next to the
# seed-style learner and loop on the same GPU, then the compiled update's CUDA tests and the
# rest of the test suite with the time left. Everything fits in BUDGET_S seconds (default
# 500), most important first.
#
# Prepare once where the registries are reachable: benchmarks/gpu_prepare.sh (fills .whl/ and
# .gl/). Then through the device tool: command "benchmarks/gpu_check.sh", carry [".whl", ".gl"],
# timeout_s 540. The log and the bench's rows (JSON) go to $OUT (default /tmp/gpu_check).
# PYTHON picks the interpreter (default python3, which holds torch on those machines). PARTS
# picks what runs after the build (default "cuda-tests bench compile-tests other-tests"; the
# bench before the compiled update's tests, which compile for minutes): a rerun with less
# device time left can take one part, e.g. PARTS=bench BUDGET_S=240.
set -uo pipefail
budget=${BUDGET_S:-500}
parts=" ${PARTS:-cuda-tests bench compile-tests other-tests} "
left() {  # seconds left (10 at least), keeping $1 for what follows
  local t=$((budget - SECONDS - $1))
  echo $((t < 10 ? 10 : t))
}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/gpu_check}
py=${PYTHON:-python3}
case $py in */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;; esac  # for after cd
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
cd "$repo"
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}

if [ -d .gl ] && ! ldconfig -p | grep libEGL.so.1 >/dev/null; then  # (-q: SIGPIPE, pipefail)
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl

site=/tmp/fastsac-site
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
if ! "$py" -c "import gymnasium, mujoco" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
fi
echo "+ building fastsac"
"$py" -m pip install -q --no-build-isolation --no-deps --no-index --upgrade --target "$site" . \
  || exit 1
nvidia-smi -L 2>/dev/null
cd "$(mktemp -d)"  # an empty directory: nothing in it shadows an installed package
"$py" -c "import torch, fastsac; print('torch', torch.__version__, 'cuda',
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, fastsac.__file__)"

# Test files: those with CUDA tests first, one line per test as it ends, and a hung test's
# stacks dumped, so that a run cut short still shows what passed and where it stopped.
pytest=("$py" -m pytest -p no:cacheprovider -o faulthandler_timeout=100
        -c "$repo/pyproject.toml" --rootdir "$repo")
cuda_files=("$repo/tests/test_sac.py" "$repo/tests/test_buffers.py")
cuda_tests=(tests/test_trainer.py::test_training_on_cuda_with_a_graph
            tests/test_trainer.py::test_cuda_training_steps_wait_for_the_gpu_only_through_events)
# In a run of their own, with a time limit of their own: they compile for a while.
compiled=(tests/test_compile.py::test_the_compiled_update_on_cuda_equals_the_eager_update
          tests/test_compile.py::test_inductors_own_noise_on_cuda_is_new_at_every_update)
cap() { local t=$(left "$2"); echo $((t > $1 ? $1 : t)); }  # at most $1, keeping $2
tests=- bench=- rest=-  # "-": not run
if [[ $parts == *" cuda-tests "* ]]; then
  echo "+ tests of the CUDA path"
  timeout "$(cap 120 300)" "${pytest[@]}" -v "${cuda_files[@]}" "${cuda_tests[@]/#/$repo/}"
  tests=$?
fi
if [[ $parts == *" bench "* ]]; then
  echo "+ fastsac bench gpu ${BENCH_ARGS:-}"
  timeout "$(left 20)" "$py" -m fastsac bench gpu ${BENCH_ARGS:-} --json "$out/bench_gpu.json"
  bench=$?
fi
if [[ $parts == *" compile-tests "* ]]; then
  echo "+ tests of the compiled update on CUDA"
  t=$(cap 150 0)
  if [ "$t" -ge 60 ]; then
    timeout "$t" "${pytest[@]}" -v "${compiled[@]/#/$repo/}"
    s=$?
  else
    echo "no time left for them"
    s=124
  fi
  [ "$tests" = - ] || [ "$tests" -eq 0 ] && tests=$s
fi
if [[ $parts == *" other-tests "* ]]; then
  echo "+ the other tests"
  t=$(left 0)
  if [ "$t" -ge 30 ]; then
    timeout "$t" "${pytest[@]}" -q "$repo/tests" "${cuda_files[@]/#/--ignore=}" \
      "${cuda_tests[@]/#/--deselect=}" "${compiled[@]/#/--deselect=}"
    rest=$?
  else
    echo "no time left for them"
    rest=124
  fi
fi
echo "parts:$parts; exit: tests of the CUDA path $tests, bench $bench, other tests $rest" \
  "(124: cut short), $SECONDS s"
ok() { [ "$1" = - ] || [ "$1" -eq 0 ]; }
ok "$tests" && ok "$bench" && ok "$rest"
