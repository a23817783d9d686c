#!/usr/bin/env bash
# ASGI server comparison: the same infergate app served by `infergate serve --server uvicorn`
# (uvloop + httptools) and `--server granian`, 1 worker each, measured with wrk through the mock
# upstream: chat completion at c=1 and c=64, streaming chat at c=8, GET /health at c=1 and c=64.
# The mock called directly is measured in the same run for the "added p50" column.
#
# Usage: bench/asgi_servers.sh [INFERGATE_REPO]     (default: the checkout this script is in)
# Env:   BENCH_DURATION, BENCH_WARMUP, BENCH_QUICK, BENCH_WRK_TIMEOUT, BENCH_KEEP as in gateway_bench.sh;
#        BENCH_ASGI_SERVERS (default "uvicorn granian"), BENCH_ASGI_CONCURRENCY (default "1 64"),
#        BENCH_STREAM_CONCURRENCY (default "8"; empty to skip).
# Pinning (2-core machine): wrk and the mock on core 0, infergate on core 1.
set -u
# shellcheck source=gateway_bench.sh disable=SC1091
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/gateway_bench.sh"

asgi_main() {
  IG_REPO=$(cd "${1:-$BENCH_HERE/..}" && pwd)
  bench_init
  local concs=${BENCH_ASGI_CONCURRENCY:-"1 64"} sconcs=${BENCH_STREAM_CONCURRENCY-8}
  local servers=${BENCH_ASGI_SERVERS:-"uvicorn granian"} server port url
  local chat="$BENCH_HERE/chat.lua" stream="$BENCH_HERE/chat_stream.lua"

  start_mock
  measure direct chat "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" none "$MOCK_PID" "$chat" "$concs"
  [ -n "$sconcs" ] && measure direct stream "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" none "$MOCK_PID" "$stream" "$sconcs"

  if infergate_setup; then
    for server in $servers; do
      port=$(free_port); url="http://127.0.0.1:$port/v1/chat/completions"
      log "starting infergate --server $server on core 1"
      if infergate_start "$server" "$port" --server "$server"; then
        sample "$server" "$url" "$IG_KEY"
        [ -n "$sconcs" ] && sample "$server" "$url" "$IG_KEY" stream
        measure "$server" chat "$url" "$IG_KEY" "$IG_PID" "$chat" "$concs"
        [ -n "$sconcs" ] && measure "$server" stream "$url" "$IG_KEY" "$IG_PID" "$stream" "$sconcs"
        BENCH_GET=1 measure "$server" health "http://127.0.0.1:$port/health" "$IG_KEY" "$IG_PID" "$chat" "$concs"
      fi
      ig_log_tail "$server"
      stop_tree "$IG_PID"
    done
  fi

  echo "ASGI servers, $(date -u '+%Y-%m-%d %H:%M UTC'), ${DUR}s per run (+${WARM}s warmup), $(nproc) cores;"
  echo "wrk + mock on core 0, \`infergate serve --server S --workers 1\` on core 1,"
  echo "infergate $(git -C "$IG_REPO" rev-parse --short HEAD 2>/dev/null), $("$IG_REPO/.venv/bin/python" -c '
from importlib.metadata import version as v
print(", ".join(f"{p} {v(p)}" for p in ("granian", "uvicorn", "uvloop", "httptools")))' 2>/dev/null)."
  echo
  report asgi
  print_notes
  return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  asgi_main "$@"
fi
