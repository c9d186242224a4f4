"""Streams stay unbuffered: how much later each event reaches the client through Bulwark
than straight from the upstream, for chat completions passed through and for
`/v1/messages` translated into Anthropic events, against the mock upstream dripping one
event every DRIP ms. Prints one JSON line.

For event i arriving at t_i (t_0 the first), the lag is (t_i - t_0) - i * DRIP; the
gateway's per-event delay is its lag minus the direct lag, median and p99 over all
events of all runs (text deltas only: one per upstream chunk). The first event's
delay is the time to the first text through the gateway minus straight from the mock
(request handling included).

    cargo build --release -p bulwark -p bulwark-testkit && python3 bench/stream_latency.py
"""
import http.client
import json
import os
import statistics
import tempfile
import time
import urllib.parse

from common import BULWARK, MOCK, start_printing, stop, wait_http

DRIP = int(os.environ.get("BENCH_DRIP_MS", "20"))
RUNS = int(os.environ.get("BENCH_RUNS", "20"))


def events(base, path, body, headers):
    """POSTs and returns the arrival times of the stream's text deltas (chat chunks with
    text, or Anthropic `content_block_delta` events): one per upstream chunk of text."""
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    t0 = time.perf_counter()
    conn.request("POST", u.path.rstrip("/") + path, json.dumps(body), {"Content-Type": "application/json", **headers})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    arrivals = []
    while True:
        line = resp.readline()
        if not line:
            break
        if not line.startswith(b"data: ") or b"[DONE]" in line:
            continue
        ev = json.loads(line[6:])
        text = (ev.get("delta", {}).get("text") if ev.get("type") == "content_block_delta"
                else (ev.get("choices") or [{}])[0].get("delta", {}).get("content"))
        if text:
            arrivals.append(time.perf_counter())
    conn.close()
    return t0, arrivals


def lags(t0, arrivals, per_event):
    """(time to first event, [lag of event i against its schedule])."""
    first = arrivals[0]
    return first - t0, [(t - first) - i * per_event for i, t in enumerate(arrivals)]


def main():
    mock, mock_url = start_printing([MOCK, "127.0.0.1:0"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "bulwark.toml")
        with open(cfg, "w") as f:
            f.write(f"""
[guard]
enabled = false
[[upstreams]]
name = "mock"
base_url = "{mock_url}/v1"
models = {{ "drip" = "drip-{DRIP}" }}
[embeddings]
enabled = false
""")
        gw, gw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", cfg],
                                    env={**os.environ, "BULWARK_DATA_DIR": f"{tmp}/data", "BULWARK_LOG": "warn"})
        try:
            wait_http(f"{gw_url}/readyz")
            chat = {"model": "drip", "messages": [{"role": "user", "content": "one two three four five six"}],
                    "stream": True}
            direct = {**chat, "model": f"drip-{DRIP}"}
            anthropic = {"model": "drip", "max_tokens": 64, "stream": True,
                         "messages": [{"role": "user", "content": "one two three four five six"}]}
            out = {"direct": ([], []), "chat": ([], []), "messages": ([], [])}
            for _ in range(RUNS):
                for name, (base, path, body, headers) in {
                    "direct": (mock_url + "/v1", "/chat/completions", direct, {}),
                    "chat": (gw_url + "/v1", "/chat/completions", chat, {}),
                    "messages": (gw_url + "/v1", "/messages", anthropic, {"anthropic-version": "2023-06-01"}),
                }.items():
                    t0, arr = events(base, path, body, headers)
                    ttfb, lag = lags(t0, arr, DRIP / 1000)
                    out[name][0].append(ttfb)
                    out[name][1].extend(lag)
            direct_lag = statistics.median(out["direct"][1])
            direct_sorted = sorted((x - direct_lag) * 1000 for x in out["direct"][1])
            report = {"bench": "stream_latency", "drip_ms": DRIP, "runs": RUNS,
                      "direct_jitter_ms_p99": round(direct_sorted[int(len(direct_sorted) * 0.99) - 1], 3)}
            for name in ("chat", "messages"):
                extra = sorted((x - direct_lag) * 1000 for x in out[name][1])
                report[name] = {
                    "first_event_extra_ms": round((statistics.median(out[name][0]) - statistics.median(out["direct"][0])) * 1000, 3),
                    "per_event_extra_ms_median": round(statistics.median(extra), 3),
                    "per_event_extra_ms_p99": round(extra[int(len(extra) * 0.99) - 1], 3),
                    "events": len(extra),
                }
            print(json.dumps(report))
        finally:
            stop(gw)
            stop(mock)


if __name__ == "__main__":
    main()
