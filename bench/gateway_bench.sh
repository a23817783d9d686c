#!/usr/bin/env bash
# Gateway overhead benchmark, one run, same machine: the mock upstream called directly, through
# LiteLLM proxy (1 worker) and through infergate (1 worker), measured with wrk at concurrency
# 1, 8 and 64 (non-streaming) and 8 (streaming, "stream": true).
#
# Usage: bench/gateway_bench.sh [INFERGATE_REPO]     (default: the checkout this script is in)
# Env:   BENCH_DURATION      seconds per wrk run (default 6; 2 with BENCH_QUICK=1)
#        BENCH_WARMUP        seconds of unmeasured wrk before each run (default 1; 0 with BENCH_QUICK=1)
#        BENCH_CONCURRENCY   non-streaming concurrencies (default "1 8 64")
#        BENCH_STREAM_CONCURRENCY  streaming concurrencies (default "8"; empty to skip)
#        BENCH_QUICK=1       smoke run: short runs, LiteLLM skipped unless BENCH_LITELLM=1
#        BENCH_SKIP_LIMITS=1 (no infergate-limits / infergate-limits-redis rows: limits_bench.sh),
#        BENCH_SKIP_LITELLM=1, BENCH_SKIP_INFERGATE=1, BENCH_SKIP_ROUTER=1 (no infergate-router rows:
#        infergate with INFERGATE_FAST_ROUTES=0, i.e. every route through FastAPI's router)
#        BENCH_LITELLM_VENV  (default /tmp/bench-venv; `litellm[proxy]` is pip-installed there on first use)
#        BENCH_IG_SERVE_ARGS extra args for `infergate serve` (e.g. "--server uvicorn")
#        BENCH_WRK_TIMEOUT   wrk socket timeout (default 2s, as in the shared baseline)
#        BENCH_STRICT=1      exit 1 when a target (>= 20x LiteLLM at c=64, <= 1 ms added p50 at c=1) is missed
#        BENCH_KEEP=1        keep the work directory (logs, catalog, data dir) under /tmp
# Pinning (2-core machine): wrk and the mock on core 0, the gateway under test on core 1.
# Progress goes to stderr; the report (markdown) to stdout.
#
# This file is also sourced by bench/asgi_servers.sh for its helper functions (nothing runs then).
set -u

BENCH_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "[bench] $*" >&2; }
note() { echo "- $*" >> "$WORK/notes"; } # a markdown bullet under the table

# ---------------------------------------------------------------------------------------------
# helpers (shared with asgi_servers.sh)

bench_init() { # sets DUR WARM WRK_TIMEOUT WORK PIDS; installs the cleanup trap; makes sure wrk exists
  if [ "${BENCH_QUICK:-0}" != 0 ]; then DUR=${BENCH_DURATION:-2}; WARM=${BENCH_WARMUP:-0}
  else DUR=${BENCH_DURATION:-6}; WARM=${BENCH_WARMUP:-1}; fi
  WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-2s}
  CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
  WORK=$(mktemp -d /tmp/igbench.XXXXXX)
  PIDS=()
  : > "$WORK/results"; : > "$WORK/rss"; : > "$WORK/notes"
  trap bench_cleanup EXIT
  ensure_wrk || exit 2
}

ensure_wrk() {
  command -v wrk >/dev/null && return 0
  log "wrk missing, installing it with apt-get"
  apt-get install -y -qq wrk >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; }
  command -v wrk >/dev/null || { echo "wrk missing and apt-get install wrk failed" >&2; return 1; }
}

descendants() { # pid -> all descendant pids (children first level, then deeper)
  local kids k
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ')
  for k in $kids; do echo "$k"; descendants "$k"; done
}

stop_tree() { # pid: TERM the process and its descendants (all started by us), KILL after 10 s
  local pid=$1 all p
  kill -0 "$pid" 2>/dev/null || return 0
  all="$pid $(descendants "$pid" | tr '\n' ' ')"
  for p in $all; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 40); do
    local alive=0
    for p in $all; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.25
  done
  for p in $all; do kill -KILL "$p" 2>/dev/null; done
  wait "$pid" 2>/dev/null
  return 0
}

bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_tree "$p"; done
  if [ "${BENCH_KEEP:-0}" != 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # url seconds [pid]: until the url answers anything; fails early when pid dies
  for _ in $(seq 1 $(( $2 * 4 ))); do
    curl -s -o /dev/null --max-time 2 "$1" && return 0
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then echo "process $3 exited before $1 answered" >&2; return 1; fi
    sleep 0.25
  done
  echo "no answer from $1 after $2 s" >&2
  return 1
}

rss_tree_kb() { # pid: summed RSS of the process and its descendants (granian/uvicorn workers)
  local total=0 p r
  for p in "$1" $(descendants "$1"); do
    r=$(ps -o rss= -p "$p" 2>/dev/null | tr -d ' ')
    [ -n "$r" ] && total=$(( total + r ))
  done
  echo "$total"
}

cpu_ticks() { # pid: utime+stime clock ticks of the process and its descendants
  local total=0 p t
  for p in "$1" $(descendants "$1"); do
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    [ -n "$t" ] && total=$(( total + t ))
  done
  echo "$total"
}

core_ticks() { # core: "busy total" clock ticks of one CPU core since boot, from /proc/stat
  # busy = user + nice + system + steal (irq/softirq left out: loopback traffic of the run itself)
  awk -v c="cpu$1" '$1 == c { b = $2 + $3 + $4 + $9; print b, b + $5 + $6 + $7 + $8 }' /proc/stat
}

measure() { # target scenario url key pid lua-script "concurrencies"
  local target=$1 scen=$2 url=$3 key=$4 pid=$5 script=$6 concs=$7 c out line t0 t1 k0 k1
  for c in $concs; do
    log "$target $scen c=$c (${DUR}s)"
    if [ "$WARM" != 0 ]; then
      BENCH_KEY="$key" taskset -c 0 wrk -t1 -c"$c" -d"${WARM}s" --timeout "$WRK_TIMEOUT" -s "$script" "$url" \
        >/dev/null 2>&1
    fi
    t0=$(cpu_ticks "$pid"); k0=$(core_ticks 1)
    out=$(BENCH_KEY="$key" taskset -c 0 wrk -t1 -c"$c" -d"${DUR}s" --timeout "$WRK_TIMEOUT" --latency \
      -s "$script" "$url" 2>&1)
    t1=$(cpu_ticks "$pid"); k1=$(core_ticks 1)
    line=$(grep '^RESULT' <<<"$out")
    if [ -z "$line" ]; then
      note "wrk produced no result for $target $scen c=$c: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
      line="RESULT rps=0 p50_ms=0 p99_ms=0 errors=1 non2xx=0 requests=0"
    fi
    echo "$target $scen $c $line cpu_ticks=$(( t1 - t0 )) clk_tck=$CLK_TCK" \
      "core1_busy=$(( ${k1% *} - ${k0% *} )) core1_total=$(( ${k1#* } - ${k0#* } ))" >> "$WORK/results"
  done
  echo "$target $(rss_tree_kb "$pid")" >> "$WORK/rss"
}

sample() { # target url key [stream]: one request with curl, noted when it is not a 200 or looks wrong
  local body='{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16}' code
  [ -n "${4:-}" ] && body='{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":true}'
  code=$(curl -s -o "$WORK/sample.out" -w '%{http_code}' --max-time 30 -H "Authorization: Bearer $3" \
    -H 'Content-Type: application/json' -d "$body" "$2")
  if [ "$code" != 200 ]; then
    note "$1 ${4:+stream }sample: HTTP $code: $(head -c 400 "$WORK/sample.out" | tr '\n' ' ')"
  elif [ -n "${4:-}" ] && ! grep -q '\[DONE\]' "$WORK/sample.out"; then
    note "$1 stream sample: HTTP 200 but no 'data: [DONE]': $(head -c 400 "$WORK/sample.out" | tr '\n' ' ')"
  elif [ -z "${4:-}" ] && ! grep -q 'Hello from the mock' "$WORK/sample.out"; then
    note "$1 sample: HTTP 200 but not the mock's answer: $(head -c 400 "$WORK/sample.out" | tr '\n' ' ')"
  fi
}

start_mock() { # sets MOCK_PORT MOCK_PID; mock pinned to core 0 (with wrk)
  local py=python3
  [ -x "$IG_REPO/.venv/bin/python" ] && py="$IG_REPO/.venv/bin/python" # has uvloop
  MOCK_PORT=$(free_port)
  taskset -c 0 "$py" "$BENCH_HERE/mock_upstream.py" "$MOCK_PORT" > "$WORK/mock.log" 2>&1 &
  MOCK_PID=$!; PIDS+=("$MOCK_PID")
  wait_http "http://127.0.0.1:$MOCK_PORT/v1/models" 15 "$MOCK_PID" || { cat "$WORK/mock.log" >&2; exit 2; }
}

infergate_setup() { # catalog + data dir + key; sets IG IG_KEY; needs MOCK_PORT
  IG=${BENCH_INFERGATE:-$IG_REPO/.venv/bin/infergate}
  [ -x "$IG" ] || { note "infergate not found at $IG (create the venv: make dev)"; return 1; }
  cat > "$WORK/catalog.toml" <<TOML
builtins = false

[[models]]
id = "mock-model"
kind = "chat"
backend = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
input_price = 1.0
output_price = 2.0
TOML
  export INFERGATE_DATA_DIR="$WORK/ig-data" INFERGATE_CONFIG="$WORK/catalog.toml"
  export INFERGATE_ADMIN_TOKEN="adm-bench-$$"
  IG_KEY=$("$IG" keys create bench 2> "$WORK/ig-keys.log" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret_key"])' 2>/dev/null)
  return 0
}

infergate_start() { # label port [serve args...]: sets IG_PID; 0 when it answers /health
  local label=$1 port=$2; shift 2
  # shellcheck disable=SC2086 # BENCH_IG_SERVE_ARGS is a word list on purpose
  taskset -c 1 "$IG" serve --host 127.0.0.1 --port "$port" --workers 1 "$@" ${BENCH_IG_SERVE_ARGS:-} \
    > "$WORK/ig-$label.log" 2>&1 &
  IG_PID=$!; PIDS+=("$IG_PID")
  if ! wait_http "http://127.0.0.1:$port/health" 120 "$IG_PID"; then
    { echo "- infergate ($label) did not come up; last log lines:"; echo '```'; tail -25 "$WORK/ig-$label.log"; echo '```'; } >> "$WORK/notes"
    return 1
  fi
  if [ -z "${IG_KEY:-}" ]; then # keys create may need the schema the server creates on start
    IG_KEY=$("$IG" keys create bench 2>> "$WORK/ig-keys.log" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret_key"])' 2>/dev/null)
    [ -n "$IG_KEY" ] || { note "infergate keys create bench failed: $(tail -5 "$WORK/ig-keys.log" | tr '\n' ' ')"; IG_KEY=none; }
  fi
  sleep 1
  # e.g. "infergate: serving 1 models on http://127.0.0.1:N (granian, 1 worker(s))"
  IG_BANNER=$(sed -n 's/^infergate: serving .* models on [^ ]* (\(.*\))$/\1/p' "$WORK/ig-$label.log" | head -1)
  return 0
}

ig_log_tail() { # label: error lines and tracebacks of a server log, into the notes
  local f="$WORK/ig-$1.log" n closed pat='^Traceback|ERROR|CRITICAL|Exception|"status":5[0-9][0-9]'
  [ -f "$f" ] || return 0
  # granian logs one INFO line per connection the client (wrk) drops mid-response at the end of a run
  closed=$(grep -c 'ASGI transport error: "Closed' "$f")
  [ "$closed" != 0 ] && note "infergate ($1) log: $closed \`[INFO] ASGI transport error: \"Closed(..)\"\` lines" \
    "(granian, connections wrk closes when a run ends)."
  n=$(grep -c -E "$pat" "$f")
  if [ "$n" != 0 ]; then
    { echo "- infergate ($1) log has $n error/traceback/5xx lines; last ones:"; echo '```';
      grep -E -A6 "$pat" "$f" | grep -v '"status":2' | tail -20 | cut -c1-300; echo '```'; } >> "$WORK/notes"
  fi
}

report() { # mode (gateway|asgi): markdown table from $WORK/results and $WORK/rss, then ratio lines
  python3 - "$1" "$WORK/results" "$WORK/rss" <<'PY'
import re
import sys

mode, results, rss_file = sys.argv[1:4]
rows = {}
for line in open(results):
    target, scen, c, rest = line.split(" ", 3)
    rows[(target, scen, int(c))] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", rest)}
rss = {}
for line in open(rss_file):
    name, kb = line.split()
    rss[name] = int(kb) // 1024 if kb.isdigit() and int(kb) else ""


def cpu_us(r):
    if not r.get("requests"):
        return ""
    return f"{r['cpu_ticks'] / r['clk_tck'] * 1e6 / r['requests']:.0f}"


def other_load(r):
    """Share of core 1 busy with processes other than the server under test (%), or None."""
    if not r.get("core1_total"):
        return None
    return max(0.0, 100 * (r["core1_busy"] - r["cpu_ticks"]) / r["core1_total"])


print("| target | scenario | conc | req/s | p50 ms | p99 ms | added p50 ms | errors | CPU µs/req | RSS MB "
      "| other load core 1 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
disturbed = []
for (target, scen, c), r in rows.items():
    d = rows.get(("direct", scen, c))
    added = "" if target == "direct" or not d else f"{r['p50_ms'] - d['p50_ms']:.2f}"
    other = other_load(r) if target != "direct" else None
    if other is not None and other > 10:
        disturbed.append(f"{target} {scen} c={c} ({other:.0f} %)")
    print(f"| {target} | {scen} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {added} | "
          f"{int(r['errors'] + r['non2xx'])} | {cpu_us(r)} | {'' if target == 'direct' else rss.get(target, '')} "
          f"| {'' if other is None else f'{other:.0f} %'} |")
print()
print("Errors = socket errors + timeouts + non-2xx answers. CPU µs/req = CPU time of the server under test"
      " (process tree, the mock for `direct`) divided by requests completed. Other load core 1 = share of"
      " the gateway's core used by other processes during the run (the machine is shared).")
if disturbed:
    print()
    print(f"**Other processes used core 1 during: {', '.join(disturbed)}** — req/s and latency of those rows"
          " are depressed; CPU µs/req (and the CPU ratio) is the steadier comparison.")
print()
missed = 0


def rps(t, s, c):
    r = rows.get((t, s, c))
    return r["rps"] if r and r["rps"] else None


if mode == "gateway":
    ig, ll = rps("infergate", "chat", 64), rps("litellm", "chat", 64)
    if ig and ll:
        ok = ig / ll >= 20
        missed += not ok
        print(f"- ratio infergate/LiteLLM req/s at c=64: **{ig / ll:.1f}x** (target >= 20x: {'PASS' if ok else 'MISS'})")
    igs, lls = rps("infergate", "stream", 8), rps("litellm", "stream", 8)
    if igs and lls:
        print(f"- ratio infergate/LiteLLM req/s, streaming at c=8: **{igs / lls:.1f}x**")
    a, b = rows.get(("infergate", "chat", 64)), rows.get(("litellm", "chat", 64))
    if a and b and a.get("requests") and b.get("requests") and a["cpu_ticks"]:
        ratio = (b["cpu_ticks"] / b["requests"]) / (a["cpu_ticks"] / a["requests"])
        print(f"- CPU per request, LiteLLM/infergate at c=64: **{ratio:.1f}x**")
    for c in (1, 64):
        fast, routed = rows.get(("infergate", "chat", c)), rows.get(("infergate-router", "chat", c))
        if fast and routed and fast.get("requests") and routed.get("requests") and fast["cpu_ticks"]:
            cpu = (routed["cpu_ticks"] / routed["requests"]) / (fast["cpu_ticks"] / fast["requests"])
            print(f"- fast route vs FastAPI's router at c={c}: **{fast['rps'] / max(routed['rps'], 1):.2f}x** "
                  f"req/s, router CPU/req **{cpu:.2f}x** the fast route's")
    i1, d1 = rows.get(("infergate", "chat", 1)), rows.get(("direct", "chat", 1))
    if i1 and d1 and i1["rps"]:
        added = i1["p50_ms"] - d1["p50_ms"]
        ok = added <= 1.0
        missed += not ok
        print(f"- infergate added p50 at c=1: **{added:.3f} ms** (target <= 1 ms: {'PASS' if ok else 'MISS'})")
    for target in ("infergate-limits", "infergate-limits-redis"):  # bench/limits_bench.sh
        r1, r64 = rows.get((target, "chat", 1)), rows.get((target, "chat", 64))
        if i1 and r1 and r1["rps"]:
            extra = r1["p50_ms"] - i1["p50_ms"]
            ok = extra <= 0.2
            missed += not ok
            print(f"- {target}: p50 at c=1 minus infergate's without limits: **{extra:+.3f} ms** "
                  f"(target <= 0.2 ms: {'PASS' if ok else 'MISS'})")
        lr = rps("litellm", "chat", 64)
        if r64 and r64["rps"] and lr:
            ok = r64["rps"] / lr >= 20
            missed += not ok
            print(f"- {target}/LiteLLM req/s at c=64: **{r64['rps'] / lr:.1f}x** (target >= 20x: {'PASS' if ok else 'MISS'})")
else:
    for scen, c in sorted({(s, c) for (_, s, c) in rows}):
        g, u = rps("granian", scen, c), rps("uvicorn", scen, c)
        if g and u:
            print(f"- granian/uvicorn req/s, {scen} c={c}: **{g / u:.2f}x**")
sys.exit(3 if missed else 0)
PY
}

print_notes() {
  if [ -s "$WORK/notes" ]; then echo; echo "Notes:"; echo; cat "$WORK/notes"; fi
}

# ---------------------------------------------------------------------------------------------

gateway_main() {
  IG_REPO=$(cd "${1:-$BENCH_HERE/..}" && pwd)
  bench_init
  local concs=${BENCH_CONCURRENCY:-"1 8 64"} sconcs=${BENCH_STREAM_CONCURRENCY-8}
  local lvenv=${BENCH_LITELLM_VENV:-/tmp/bench-venv} chat="$BENCH_HERE/chat.lua" stream="$BENCH_HERE/chat_stream.lua"
  local skip_ll=${BENCH_SKIP_LITELLM:-}
  [ "${BENCH_QUICK:-0}" != 0 ] && [ -z "${BENCH_LITELLM:-}" ] && skip_ll=1
  local ll_version="" ig_version=""
  IG_BANNER=""

  start_mock
  measure direct chat "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" none "$MOCK_PID" "$chat" "$concs"
  [ -n "$sconcs" ] && measure direct stream "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" none "$MOCK_PID" "$stream" "$sconcs"

  if [ -z "$skip_ll" ]; then
    if [ ! -x "$lvenv/bin/litellm" ]; then
      log "installing litellm[proxy] into $lvenv (first use, takes a few minutes)"
      { python3 -m venv "$lvenv" && "$lvenv/bin/pip" install -q 'litellm[proxy]'; } > "$WORK/litellm-install.log" 2>&1 \
        || note "LiteLLM install failed: $(tail -3 "$WORK/litellm-install.log" | tr '\n' ' ')"
    fi
    if [ -x "$lvenv/bin/litellm" ]; then
      ll_version=$("$lvenv/bin/pip" show litellm 2>/dev/null | awk '/^Version:/{print $2}')
      local mk lport lpid
      mk="sk-bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
      lport=$(free_port)
      cat > "$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: dummy
YAML
      log "starting LiteLLM $ll_version on core 1"
      LITELLM_MASTER_KEY=$mk LITELLM_LOCAL_MODEL_COST_MAP=True taskset -c 1 "$lvenv/bin/litellm" \
        --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$lport" --num_workers 1 > "$WORK/litellm.log" 2>&1 &
      lpid=$!; PIDS+=("$lpid")
      if wait_http "http://127.0.0.1:$lport/health/liveliness" 180 "$lpid"; then
        sleep 2
        sample litellm "http://127.0.0.1:$lport/v1/chat/completions" "$mk"
        [ -n "$sconcs" ] && sample litellm "http://127.0.0.1:$lport/v1/chat/completions" "$mk" stream
        measure litellm chat "http://127.0.0.1:$lport/v1/chat/completions" "$mk" "$lpid" "$chat" "$concs"
        [ -n "$sconcs" ] && measure litellm stream "http://127.0.0.1:$lport/v1/chat/completions" "$mk" "$lpid" "$stream" "$sconcs"
      else
        { echo "- LiteLLM did not come up; last log lines:"; echo '```'; tail -20 "$WORK/litellm.log"; echo '```'; } >> "$WORK/notes"
      fi
      stop_tree "$lpid"
    fi
  fi

  if [ -z "${BENCH_SKIP_INFERGATE:-}" ] && infergate_setup; then
    local iport url
    iport=$(free_port); url="http://127.0.0.1:$iport/v1/chat/completions"
    ig_version="$(git -C "$IG_REPO" rev-parse --short HEAD 2>/dev/null)"
    log "starting infergate ($IG) on core 1"
    if infergate_start gateway "$iport"; then
      sample infergate "$url" "$IG_KEY"
      [ -n "$sconcs" ] && sample infergate "$url" "$IG_KEY" stream
      measure infergate chat "$url" "$IG_KEY" "$IG_PID" "$chat" "$concs"
      [ -n "$sconcs" ] && measure infergate stream "$url" "$IG_KEY" "$IG_PID" "$stream" "$sconcs"
    fi
    ig_log_tail gateway
    stop_tree "$IG_PID"
    # The same server with its hot routes sent through FastAPI's router: is the fast path needed?
    if [ -z "${BENCH_SKIP_ROUTER:-}" ]; then
      iport=$(free_port); url="http://127.0.0.1:$iport/v1/chat/completions"
      log "starting infergate with INFERGATE_FAST_ROUTES=0 on core 1"
      if INFERGATE_FAST_ROUTES=0 infergate_start router "$iport"; then
        sample infergate-router "$url" "$IG_KEY"
        measure infergate-router chat "$url" "$IG_KEY" "$IG_PID" "$chat" "$concs"
      fi
      ig_log_tail router
      stop_tree "$IG_PID"
    fi
    # With limits on the bench key (a budget and an rpm limit), in-process and on Redis (issue 11)
    if [ -z "${BENCH_SKIP_LIMITS:-}" ]; then
      # shellcheck source=limits_bench.sh disable=SC1091
      declare -F limits_targets >/dev/null || . "$BENCH_HERE/limits_bench.sh"
      limits_targets "$concs"
    fi
  fi

  echo "Gateway overhead, $(date -u '+%Y-%m-%d %H:%M UTC'), ${DUR}s per run (+${WARM}s warmup), $(nproc) cores;"
  echo "wrk + mock on core 0, gateway on core 1, 1 worker each. LiteLLM ${ll_version:-(skipped)},"
  echo "infergate ${ig_version:-(skipped)} (\`infergate serve --workers 1${BENCH_IG_SERVE_ARGS:+ $BENCH_IG_SERVE_ARGS}\`${IG_BANNER:+ → $IG_BANNER})."
  echo
  report gateway; local rc=$?
  print_notes
  [ "${BENCH_STRICT:-0}" != 0 ] && [ "$rc" = 3 ] && return 1
  return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  gateway_main "$@"
fi
