-- wrk script: POST a small chat completion with a bearer key from env BENCH_KEY.
-- BENCH_GET=1 sends a plain GET instead (used for GET /health).
-- done() prints one machine-readable RESULT line that the bench scripts parse.
if os.getenv("BENCH_GET") then
  wrk.method = "GET"
else
  wrk.method = "POST"
  wrk.body = '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
  wrk.headers["Content-Type"] = "application/json"
end
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, summary.requests))
end
