-- wrk script: POST a small *streaming* chat completion ("stream": true, SSE answer) with a bearer
-- key from env BENCH_KEY. wrk records the latency when the whole response has arrived, so p50/p99
-- are time to the last byte ("data: [DONE]"), not time to first token.
wrk.method = "POST"
wrk.body = '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":true}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, summary.requests))
end
