#!/usr/bin/env bash
# Key limits overhead (issue 11): the gateway bench's chat scenario through infergate with the bench
# key unlimited ("infergate"), with a monthly budget and an rpm limit enforced by the in-process
# limiter ("infergate-limits"), and the same limits shared through Redis ("infergate-limits-redis",
# a private redis-server pinned to core 0 with wrk and the mock). LiteLLM runs too (c=64 only) for
# the 20x target when its venv exists or can be installed (as in gateway_bench.sh).
# The limits never refuse here (rpm 100,000,000, budget 1,000,000 USD): every request pays the full
# price of a limited key (prompt counted, reservation, settle) without being turned away.
#
# Usage: bench/limits_bench.sh [INFERGATE_REPO]     (default: the checkout this script is in)
# Env:   BENCH_DURATION, BENCH_WARMUP, BENCH_QUICK, BENCH_WRK_TIMEOUT, BENCH_KEEP, BENCH_LITELLM_VENV,
#        BENCH_SKIP_LITELLM, BENCH_IG_SERVE_ARGS as in gateway_bench.sh;
#        BENCH_LIMITS_CONCURRENCY (default "1 64").
# Targets: >= 20x LiteLLM's req/s at c=64 with limits on; <= 0.2 ms more added p50 at c=1 than without.
set -u
# gateway_bench.sh sources this file for limits_targets (its rows "infergate-limits*"); run alone,
# this file sources gateway_bench.sh for the helpers.
# shellcheck source=gateway_bench.sh disable=SC1091
declare -F bench_init >/dev/null || . "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/gateway_bench.sh"

start_litellm_c64() { # measures LiteLLM at c=64 when its venv is there (installed on first use)
  local lvenv=${BENCH_LITELLM_VENV:-/tmp/bench-venv} mk lport lpid
  if [ ! -x "$lvenv/bin/litellm" ]; then
    log "installing litellm[proxy] into $lvenv (first use, takes a few minutes)"
    { python3 -m venv "$lvenv" && "$lvenv/bin/pip" install -q 'litellm[proxy]'; } > "$WORK/litellm-install.log" 2>&1 \
      || { note "LiteLLM install failed: $(tail -3 "$WORK/litellm-install.log" | tr '\n' ' ')"; return 0; }
  fi
  LL_VERSION=$("$lvenv/bin/pip" show litellm 2>/dev/null | awk '/^Version:/{print $2}')
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
  log "starting LiteLLM $LL_VERSION on core 1"
  LITELLM_MASTER_KEY=$mk LITELLM_LOCAL_MODEL_COST_MAP=True taskset -c 1 "$lvenv/bin/litellm" \
    --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$lport" --num_workers 1 > "$WORK/litellm.log" 2>&1 &
  lpid=$!; PIDS+=("$lpid")
  if wait_http "http://127.0.0.1:$lport/health/liveliness" 180 "$lpid"; then
    sleep 2
    sample litellm "http://127.0.0.1:$lport/v1/chat/completions" "$mk"
    measure litellm chat "http://127.0.0.1:$lport/v1/chat/completions" "$mk" "$lpid" "$BENCH_HERE/chat.lua" 64
  else
    note "LiteLLM did not come up: $(tail -5 "$WORK/litellm.log" | tr '\n' ' ' | cut -c1-300)"
  fi
  stop_tree "$lpid"
}

check_limited() { # label url: one request must carry the key's x-ratelimit-* headers
  curl -s -o /dev/null -D "$WORK/headers-$1" --max-time 30 -H "Authorization: Bearer $IG_KEY" \
    -H 'Content-Type: application/json' \
    -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16}' "$2"
  grep -qi '^x-ratelimit-limit-requests: 100000000' "$WORK/headers-$1" \
    || note "$1: the answer has no x-ratelimit-limit-requests header: limits were not on"
}

limits_targets() { # "concurrencies": infergate-limits and infergate-limits-redis rows; needs the mock and
  # infergate_setup (IG, IG_KEY). The bench key gets its limits here and loses them at the end.
  local concs=$1 chat="$BENCH_HERE/chat.lua" port url uuid rport rpid
  uuid=$("$IG" keys list --json | python3 -c 'import json,sys; print([k["uuid"] for k in json.load(sys.stdin) if k["name"] == "bench"][0])')
  "$IG" keys limits "$uuid" --rpm 100000000 --budget 1000000 > "$WORK/limits.json" \
    || { note "infergate keys limits failed"; return 0; }

  port=$(free_port); url="http://127.0.0.1:$port/v1/chat/completions"
  if infergate_start limits "$port"; then
    sample infergate-limits "$url" "$IG_KEY"
    check_limited infergate-limits "$url"
    measure infergate-limits chat "$url" "$IG_KEY" "$IG_PID" "$chat" "$concs"
  fi
  ig_log_tail limits
  stop_tree "$IG_PID"

  rport=$(free_port)
  taskset -c 0 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    > "$WORK/redis.log" 2>&1 &
  rpid=$!; PIDS+=("$rpid")
  for _ in $(seq 1 40); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.25; done
  port=$(free_port); url="http://127.0.0.1:$port/v1/chat/completions"
  if INFERGATE_REDIS_URL="redis://127.0.0.1:$rport/0" infergate_start limits-redis "$port"; then
    sample infergate-limits-redis "$url" "$IG_KEY"
    check_limited infergate-limits-redis "$url"
    measure infergate-limits-redis chat "$url" "$IG_KEY" "$IG_PID" "$chat" "$concs"
    grep -q "Redis unreachable for key limits" "$WORK/ig-limits-redis.log" \
      && note "infergate-limits-redis: Redis was unreachable during the run (per-process fallback measured)"
  fi
  ig_log_tail limits-redis
  stop_tree "$IG_PID"
  stop_tree "$rpid"

  "$IG" keys limits "$uuid" --clear > /dev/null
}

limits_main() {
  IG_REPO=$(cd "${1:-$BENCH_HERE/..}" && pwd)
  bench_init
  local concs=${BENCH_LIMITS_CONCURRENCY:-"1 64"} chat="$BENCH_HERE/chat.lua" port url
  LL_VERSION=""
  start_mock
  measure direct chat "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" none "$MOCK_PID" "$chat" "$concs"
  local skip_ll=${BENCH_SKIP_LITELLM:-}
  [ "${BENCH_QUICK:-0}" != 0 ] && [ -z "${BENCH_LITELLM:-}" ] && skip_ll=1
  [ -z "$skip_ll" ] && start_litellm_c64

  infergate_setup || return 1
  port=$(free_port); url="http://127.0.0.1:$port/v1/chat/completions"
  if infergate_start plain "$port"; then
    sample infergate "$url" "$IG_KEY"
    measure infergate chat "$url" "$IG_KEY" "$IG_PID" "$chat" "$concs"
  fi
  ig_log_tail plain
  stop_tree "$IG_PID"

  limits_targets "$concs"

  echo "Key limits, $(date -u '+%Y-%m-%d %H:%M UTC'), ${DUR}s per run (+${WARM}s warmup), $(nproc) cores;"
  echo "wrk + mock (+ redis-server) on core 0, \`infergate serve --workers 1\` on core 1. infergate"
  echo "$(git -C "$IG_REPO" rev-parse --short HEAD 2>/dev/null); LiteLLM ${LL_VERSION:-(skipped)}. Limits of the bench key:"
  echo "\`$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["limits"]))' "$WORK/limits.json" 2>/dev/null)\`."
  echo
  report limits
  python3 - "$WORK/results" <<'PY'
import re
import sys

rows = {}
for line in open(sys.argv[1]):
    target, scen, c, rest = line.split(" ", 3)
    rows[(target, int(c))] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", rest)}


def cpu(r):
    return r["cpu_ticks"] / r["clk_tck"] * 1e6 / r["requests"] if r.get("requests") else None


base1, base64 = rows.get(("infergate", 1)), rows.get(("infergate", 64))
ll = rows.get(("litellm", 64))
for target in ("infergate-limits", "infergate-limits-redis"):
    r1, r64 = rows.get((target, 1)), rows.get((target, 64))
    if base1 and r1 and r1["rps"]:
        extra = r1["p50_ms"] - base1["p50_ms"]
        print(f"- {target}: added p50 at c=1 vs no limits: **{extra:+.3f} ms** "
              f"(target <= 0.2 ms: {'PASS' if extra <= 0.2 else 'MISS'})")
    if base64 and r64 and r64["rps"]:
        a, b = cpu(r64), cpu(base64)
        cpu_text = f", CPU/req {a - b:+.0f} µs" if a and b else ""
        print(f"- {target}: req/s at c=64 vs no limits: **{r64['rps'] / base64['rps']:.2f}x**{cpu_text}")
    if ll and r64 and ll["rps"]:
        ratio = r64["rps"] / ll["rps"]
        print(f"- {target} / LiteLLM req/s at c=64: **{ratio:.1f}x** (target >= 20x: {'PASS' if ratio >= 20 else 'MISS'})")
PY
  print_notes
  return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  limits_main "$@"
fi
