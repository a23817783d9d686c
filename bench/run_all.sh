#!/usr/bin/env bash
# All benchmarks, one after the other: gateway overhead (mock direct / LiteLLM / infergate),
# ASGI server comparison (uvicorn vs granian), and bench/llama_bench.py when it exists.
# The tables go to stdout and to bench/results/latest.md (gitignored); progress to stderr.
#
# Usage: bash bench/run_all.sh        (what `make bench` runs)
# Env:   BENCH_DURATION (default 6), BENCH_QUICK=1 for a fast smoke run, BENCH_LLAMA_ARGS (arguments
#        for llama_bench.py; default none, "--runs 1 --tokens 32" with BENCH_QUICK=1), and the
#        variables documented in gateway_bench.sh and asgi_servers.sh.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT_DIR="$HERE/results"
mkdir -p "$OUT_DIR"
TMP_OUT=$(mktemp "$OUT_DIR/.latest.XXXXXX")
export BENCH_DURATION=${BENCH_DURATION:-$([ "${BENCH_QUICK:-0}" != 0 ] && echo 2 || echo 6)}
FAILED=()
# llama_bench.py arguments: fewer, shorter runs in a smoke run
LLAMA_ARGS=${BENCH_LLAMA_ARGS-$([ "${BENCH_QUICK:-0}" != 0 ] && echo "--runs 1 --tokens 32")}

section() { # title command...: runs a part, records its failure, keeps going
  local title=$1 rc; shift
  printf '\n## %s\n\n' "$title"
  "$@"; rc=$?
  if [ "$rc" != 0 ]; then
    FAILED+=("$title (exit $rc)")
    printf '\n_%s exited with status %s._\n' "$title" "$rc"
  fi
  return 0
}

{
  echo "# infergate benchmarks"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(
    [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (dirty)'),"
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),"
  echo "$("$REPO/.venv/bin/python" --version 2>&1), $(wrk -v 2>&1 | head -1 | cut -c1-40)."
  echo "BENCH_DURATION=$BENCH_DURATION${BENCH_QUICK:+ BENCH_QUICK=$BENCH_QUICK}."
  echo "Shared, noisy machine: compare ratios within one run, not absolute figures across runs."

  section "Gateway overhead (bench/gateway_bench.sh)" bash "$HERE/gateway_bench.sh" "$REPO"
  section "ASGI servers (bench/asgi_servers.sh)" bash "$HERE/asgi_servers.sh" "$REPO"
  if [ -f "$HERE/llama_bench.py" ]; then
    # shellcheck disable=SC2086 # BENCH_LLAMA_ARGS is a word list on purpose
    section "Local model (bench/llama_bench.py)" "$REPO/.venv/bin/python" "$HERE/llama_bench.py" $LLAMA_ARGS
  fi
  if [ "${#FAILED[@]}" != 0 ]; then
    printf '\nFailed parts: %s\n' "${FAILED[*]}"
  fi
  [ "${#FAILED[@]}" = 0 ]
} | tee "$TMP_OUT"
RC=${PIPESTATUS[0]}
mv "$TMP_OUT" "$OUT_DIR/latest.md"
echo "[bench] written to $OUT_DIR/latest.md" >&2
exit "$RC"
