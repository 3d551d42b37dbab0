#!/usr/bin/env bash
# Prepares what benchmarks/gpu_check.sh carries to a GPU machine that has no network: the
# wheels its image lacks (gymnasium and MuJoCo, for its Python 3.12) in .whl/, and the GL
# loaders MuJoCo's EGL rendering needs in .gl/. Both folders are ignored by git. Run it here,
# where pip and apt reach their registries.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.gl/; do
  grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
rm -rf .whl .gl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
  gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.0 mujoco-core==4.0.0 \
  mujoco-studio==4.0.0 glfw==2.11.0 pyopengl==3.1.10 websockets==17.4
mkdir -p .gl /tmp/amd64/partial
apt_arch=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${apt_arch[@]}" update -qq
(cd .gl && apt-get "${apt_arch[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 \
  libgl1 libglx0 libgles2 2>/dev/null)
du -sh .whl .gl
