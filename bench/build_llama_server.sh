#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (and `llama-bench`) once, from the llama.cpp source that is
# vendored in the llama-cpp-python sdist on PyPI (vendor/llama.cpp), so that bench/llama_bench.py
# compares LlamaCppEngine with the very same llama.cpp revision the project's wheel is built from.
# Idempotent: when $LLAMA_SERVER_BIN exists and runs (and, for a binary this script built, was built
# from the wanted version), nothing is done. ~4 minutes on 2 cores the first time.
#
# Usage: bash bench/build_llama_server.sh        (bench/run_all.sh calls it)
# Prints the path of llama-server on stdout; progress to stderr; pip/cmake output to build.log
# next to the binary.
# Env:   LLAMA_SERVER_BIN         where llama-server goes (default
#                                 ~/.cache/infergate/llama-server/bin/llama-server); llama-bench and
#                                 the shared libraries go next to it
#        LLAMA_CPP_VERSION        llama-cpp-python sdist to take llama.cpp from (default 0.3.36, as
#                                 in scripts/install.sh)
#        LLAMA_SERVER_BUILD_JOBS  parallel compile jobs (default 2)
#
# Compiler flags, chosen so the comparison is fair. `pip wheel llama-cpp-python` (what
# scripts/install.sh runs) configures this same source through scikit-build-core with
# CMAKE_BUILD_TYPE=Release, the CPU flags of scripts/ggml_cpu_flags.sh (AVX2/FMA/F16C, not
# -march=native) and llama.cpp's other defaults: BUILD_SHARED_LIBS=ON, GGML_OPENMP=ON,
# GGML_LLAMAFILE=ON, and llama-cpp-python forces LLAMA_CURL=OFF. So the server is built with the
# same: Release, the same CPU flags, shared libs (-fPIC like the wheel's libggml*/libllama.so,
# rpath $ORIGIN like the wheel's llama_cpp/lib) and the other defaults left alone. Only
# the server's web UI is left out (LLAMA_BUILD_UI=OFF, LLAMA_USE_PREBUILT_UI=OFF): it is fetched
# from the network or built with npm, and the benchmark only uses /health and /v1/chat/completions.
set -euo pipefail

VERSION=${LLAMA_CPP_VERSION:-0.3.36}
BIN=${LLAMA_SERVER_BIN:-$HOME/.cache/infergate/llama-server/bin/llama-server}
DEST=$(dirname "$BIN")
JOBS=${LLAMA_SERVER_BUILD_JOBS:-2}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PIP="$HERE/../.venv/bin/pip" # the project venv's pip (only `pip download` is used)
STAMP="$DEST/BUILD_INFO" # written by this script: which sdist and flags the binaries come from
LOG="$DEST/build.log"

log() { echo "[llama-server] $*" >&2; }

if "$BIN" --version >/dev/null 2>&1; then
  if [ -f "$STAMP" ] && grep -qx "llama-cpp-python $VERSION" "$STAMP" && grep -q -- "-DGGML_NATIVE=OFF" "$STAMP"; then
    log "already built: $BIN"
    echo "$BIN"
    exit 0
  fi
  log "$BIN was built from another llama-cpp-python version or CPU flags: rebuilding"
fi

# shellcheck source=../scripts/ggml_cpu_flags.sh
. "$HERE/../scripts/ggml_cpu_flags.sh"
# shellcheck disable=SC2206 # a word list on purpose
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  $GGML_CPU_CMAKE_ARGS
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_CURL=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DBUILD_SHARED_LIBS=ON
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
  "-DCMAKE_INSTALL_RPATH=\$ORIGIN"
)

mkdir -p "$DEST"
TMP=$(mktemp -d /tmp/llama-server-build.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
: > "$LOG"
START=$(date +%s)

log "downloading the llama-cpp-python $VERSION sdist from PyPI"
"$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$TMP" >>"$LOG" 2>&1 \
  || { log "pip download failed (see $LOG)"; tail -20 "$LOG" >&2; exit 1; }
tar -xzf "$TMP"/llama_cpp_python-"$VERSION".tar.gz -C "$TMP"
SRC="$TMP/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -f "$SRC/CMakeLists.txt" ] || { log "no vendor/llama.cpp in the sdist"; exit 1; }

log "configuring: cmake ${CMAKE_FLAGS[*]}"
(cd "$SRC" && cmake -B build "${CMAKE_FLAGS[@]}") >>"$LOG" 2>&1 \
  || { log "cmake configure failed (see $LOG)"; tail -30 "$LOG" >&2; exit 1; }
log "compiling llama-server and llama-bench with -j$JOBS (about 4 minutes on 2 cores)"
(cd "$SRC" && cmake --build build -j"$JOBS" --target llama-server llama-bench) >>"$LOG" 2>&1 \
  || { log "build failed (see $LOG)"; tail -30 "$LOG" >&2; exit 1; }

# the binaries and the shared libraries they load from the build tree (libllama, libggml*, ...)
cp -a --remove-destination "$SRC"/build/bin/lib*.so* "$SRC"/build/bin/llama-bench "$DEST"/
cp --remove-destination "$SRC"/build/bin/llama-server "$BIN"
for exe in "$BIN" "$DEST"/llama-bench; do
  if ldd "$exe" | grep -q 'not found'; then
    log "$exe: missing shared libraries:"; ldd "$exe" | grep 'not found' >&2; exit 1
  fi
done
"$BIN" --version >/dev/null 2>&1 || { log "the built llama-server does not run"; exit 1; }
{
  echo "llama-cpp-python $VERSION"
  echo "cmake ${CMAKE_FLAGS[*]}"
  "$BIN" --version 2>&1 | grep -i -m2 'version\|built' || true
  gcc --version | head -1
} > "$STAMP"
log "built in $(($(date +%s) - START)) s: $DEST ($(tr '\n' ';' < "$STAMP"))"
echo "$BIN"
