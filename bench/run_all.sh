#!/usr/bin/env bash
# All benchmarks, one after the other: gateway overhead (mock direct / LiteLLM / infergate),
# ASGI server comparison (uvicorn vs granian), and bench/llama_bench.py when it exists.
# The tables go to stdout and to bench/results/latest.md (gitignored); progress to stderr.
#
# Usage: bash bench/run_all.sh        (what `make bench` runs)
# Env:   BENCH_DURATION (default 6), BENCH_QUICK=1 for a fast smoke run, BENCH_LLAMA_ARGS (arguments
#        for llama_bench.py; default none, "--runs 1 --tokens 32" with BENCH_QUICK=1),
#        BENCH_MULTITURN_ARGS (arguments for multiturn_bench.py; default none, fewer conversations
#        and turns with BENCH_QUICK=1),
#        BENCH_SKIP_LLAMA_SERVER=1 (no llama-server baseline: not built, its rows skipped), and the
#        variables documented in gateway_bench.sh, asgi_servers.sh and build_llama_server.sh.
# llama_bench.py's baseline, llama.cpp's own llama-server, is built once by build_llama_server.sh
# (~4 min on 2 cores, into ~/.cache/infergate/llama-server) and LLAMA_SERVER_BIN points at it.
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
CACHE_ARGS=${BENCH_CACHE_ARGS-$([ "${BENCH_QUICK:-0}" != 0 ] && echo "--runs 1")}
MULTITURN_ARGS=${BENCH_MULTITURN_ARGS-$([ "${BENCH_QUICK:-0}" != 0 ] && echo "--conversations 8 --turns 3")}

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
  # /health p50/p99 while 8 clients send 4 MiB prompts, code at f663611 vs the working tree (issue 9)
  section "Health under load (bench/health_under_load.py)" \
    env BENCH_HEALTH_DURATION="${BENCH_HEALTH_DURATION:-$([ "${BENCH_QUICK:-0}" != 0 ] && echo "$BENCH_DURATION" || echo 10)}" \
    "$REPO/.venv/bin/python" "$HERE/health_under_load.py"
  if [ -f "$HERE/llama_bench.py" ]; then
    # llama-server baseline: built once (~4 min), then reused; stdout of the script is its path
    SERVER_BUILD_FAILED=0
    if [ "${BENCH_SKIP_LLAMA_SERVER:-0}" != 0 ]; then
      unset LLAMA_SERVER_BIN
    elif LLAMA_SERVER_BIN=$(bash "$HERE/build_llama_server.sh"); then
      export LLAMA_SERVER_BIN
    else
      unset LLAMA_SERVER_BIN
      SERVER_BUILD_FAILED=1
      FAILED+=("llama-server build (bench/build_llama_server.sh)")
    fi
    # shellcheck disable=SC2086 # BENCH_LLAMA_ARGS is a word list on purpose
    section "Local model (bench/llama_bench.py)" "$REPO/.venv/bin/python" "$HERE/llama_bench.py" $LLAMA_ARGS
    if [ "$SERVER_BUILD_FAILED" = 1 ]; then
      printf '\n_llama-server could not be built (bench/build_llama_server.sh; its build.log is next to'
      printf ' the binary, ~/.cache/infergate/llama-server/bin by default): its rows are skipped._\n'
    fi
  fi
  # shellcheck disable=SC2086 # BENCH_CACHE_ARGS is a word list on purpose
  section "Prompt cache (bench/prompt_cache_bench.py)" "$REPO/.venv/bin/python" "$HERE/prompt_cache_bench.py" $CACHE_ARGS
  # 32 conversations x 4 turns on 4 slots: TTFT per turn, infergate vs llama-server --cache-ram
  # shellcheck disable=SC2086 # BENCH_MULTITURN_ARGS is a word list on purpose
  section "Multi-turn prefix reuse (bench/multiturn_bench.py)" "$REPO/.venv/bin/python" \
    "$HERE/multiturn_bench.py" $MULTITURN_ARGS
  # /v1/responses with store: true vs /v1/chat/completions on the mock upstream at c=64 (issue 10)
  section "Responses vs chat (bench/responses_bench.py)" "$REPO/.venv/bin/python" "$HERE/responses_bench.py"
  # job queue throughput, trivial jobs: SQLite and PostgreSQL, 1 and 4 workers, vs pgqueuer (issue 12);
  # pgqueuer is the `bench` extra, installed here on first use
  "$REPO/.venv/bin/python" -c "import pgqueuer" 2>/dev/null \
    || (cd "$REPO" && "$REPO/.venv/bin/pip" install -q -e ".[bench]" >&2)
  section "Job queue (bench/jobs_bench.py)" "$REPO/.venv/bin/python" "$HERE/jobs_bench.py" \
    --jobs "$([ "${BENCH_QUICK:-0}" != 0 ] && echo 1000 || echo 5000)"
  # per-key limits: CPU of admission + settlement (the HTTP rows are in the gateway table above)
  section "Key limits (bench/limits_micro.py)" "$REPO/.venv/bin/python" "$HERE/limits_micro.py" \
    --requests "$([ "${BENCH_QUICK:-0}" != 0 ] && echo 2000 || echo 10000)" --concurrency 64
  section "Speech (bench/speech_rtf.py)" "$REPO/.venv/bin/python" "$HERE/speech_rtf.py" \
    --runs "$([ "${BENCH_QUICK:-0}" != 0 ] && echo 1 || echo 3)"
  # the time POST /v1/images/generations adds over the same diffusers pipeline called directly
  section "Images (bench/images_bench.py)" "$REPO/.venv/bin/python" "$HERE/images_bench.py" \
    --runs "$([ "${BENCH_QUICK:-0}" != 0 ] && echo 2 || echo 8)"
  if [ "${#FAILED[@]}" != 0 ]; then
    printf '\nFailed parts: %s\n' "${FAILED[*]}"
  fi
  [ "${#FAILED[@]}" = 0 ]
} | tee "$TMP_OUT"
RC=${PIPESTATUS[0]}
mv "$TMP_OUT" "$OUT_DIR/latest.md"
echo "[bench] written to $OUT_DIR/latest.md" >&2
exit "$RC"
