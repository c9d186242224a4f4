"""Soak (issue 20, item 4): Bulwark in front of the mock upstream at saturation for
SOAK_SECONDS (default 600), with a mix of JSON, streams, cache hits, guard findings
(pseudonymised e-mail addresses) and refusals (blocked injections) from wrk
(bench/soak.lua) in consecutive 10-second windows on keep-alive connections. The
gateway's RSS is sampled every second from /proc. Prints one JSON line per window and a
summary: throughput, p99 per window, every status per kind (only the intended ones
allowed: 200, and 400 for the refusals), and the RSS slope after warm-up (least squares
over the samples after SOAK_WARMUP seconds, default 120), in MB per 10 minutes. Writes
the samples to bench/results/soak.json and a plot of RSS and p99 over time to
docs/soak.svg."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

from common import BULWARK, MOCK, ROOT, start_printing, stop

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
WARMUP = int(os.environ.get("SOAK_WARMUP", "120"))
CONNS = int(os.environ.get("SOAK_CONNECTIONS", "64"))
WINDOW = 10


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def slope(points):
    """Least-squares slope of (t, y)."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    num = sum((t - mt) * (y - my) for t, y in points)
    den = sum((t - mt) ** 2 for t, _ in points) or 1.0
    return num / den


def svg(rss, windows, path):
    """RSS (MB, left axis) and p99 (ms, right axis) against time, as a plain SVG."""
    w, h, pad = 720, 300, 50
    tmax = max(t for t, _ in rss) or 1
    rmax = max(r for _, r in rss) * 1.1 or 1
    pmax = max(x["p99_ms"] for x in windows) * 1.1 or 1

    def x(t):
        return pad + (w - 2 * pad) * t / tmax

    def y(v, top):
        return h - pad - (h - 2 * pad) * v / top

    rline = " ".join(f"{x(t):.1f},{y(r, rmax):.1f}" for t, r in rss)
    pline = " ".join(f"{x(p['t_end']):.1f},{y(p['p99_ms'], pmax):.1f}" for p in windows)
    ticks = "".join(
        f'<text x="{x(t):.0f}" y="{h - pad + 16}" font-size="11" text-anchor="middle">{t // 60:.0f} min</text>'
        for t in range(0, int(tmax) + 1, 120))
    out = f'''<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>
<line x1="{w - pad}" y1="{pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>
{ticks}
<text x="{pad}" y="{pad - 10}" font-size="12" fill="#1f5fbf">RSS, MB (0 to {rmax:.0f})</text>
<text x="{w - pad}" y="{pad - 10}" font-size="12" fill="#c0392b" text-anchor="end">p99 per 10 s, ms (0 to {pmax:.1f})</text>
<line x1="{x(WARMUP):.1f}" y1="{pad}" x2="{x(WARMUP):.1f}" y2="{h - pad}" stroke="#bbb" stroke-dasharray="4"/>
<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="{rline}"/>
<polyline fill="none" stroke="#c0392b" stroke-width="1.5" points="{pline}"/>
</svg>
'''
    path.write_text(out)


def main():
    tmp = pathlib.Path(tempfile.mkdtemp())
    mock, mock_url = start_printing([MOCK, "127.0.0.1:0"])
    cfg = tmp / "bulwark.toml"
    # The guard on (its defaults: injection blocked, personal data pseudonymised), the
    # cache on, the audit log on (batch durability).
    subprocess.run([BULWARK, "audit", "keygen", "--out", str(tmp / "auditor")], check=True, capture_output=True)
    cfg.write_text(f'[[upstreams]]\nname = "mock"\nbase_url = "{mock_url}/v1"\nmodels = {{ "bench" = "mock" }}\n'
                   f'[cache]\nenabled = true\n[audit]\npublic_key = "{tmp / "auditor" / "audit.pub"}"\n')
    env = {**os.environ, "BULWARK_LOG": "error", "BULWARK_DATA_DIR": str(tmp / "data"),
           "BULWARK_MODEL_DIR": str(ROOT / "models")}
    gw, gw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)], env=env)
    samples = []
    stop_sampling = threading.Event()
    t0 = time.time()

    def sample():
        while not stop_sampling.is_set():
            samples.append((time.time() - t0, rss_kib(gw.pid) / 1024))
            stop_sampling.wait(1.0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    windows = []
    statuses = {}
    try:
        while time.time() - t0 < SECONDS:
            out = subprocess.run(
                ["wrk", "-t2", f"-c{CONNS}", f"-d{WINDOW}s", "--latency", "-s", str(ROOT / "bench/soak.lua"),
                 gw_url], capture_output=True, text=True, check=True).stdout
            line = next(l for l in out.splitlines() if l.startswith("JSON "))
            r = json.loads(line[5:])
            for k, v in r["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
            win = {"t_end": round(time.time() - t0, 1), "rps": round(r["requests"] / (r["duration_us"] / 1e6)),
                   "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000, "socket_errors": r["errors"],
                   "rss_mb": round(samples[-1][1], 1)}
            windows.append(win)
            print(json.dumps(win), flush=True)
    finally:
        stop_sampling.set()
        sampler.join()
        stop(gw)
        stop(mock)
    after = [(t, r) for t, r in samples if t >= WARMUP]
    per_10min = slope(after) * 600 if len(after) > 2 else float("nan")
    unintended = {k: v for k, v in statuses.items()
                  if not (k.startswith("200:") or k == "400:prompt_injection_detected")}
    summary = {
        "seconds": round(samples[-1][0]), "connections": CONNS, "requests": sum(statuses.values()),
        "rps_mean": round(sum(w["rps"] for w in windows) / len(windows)),
        "p99_ms_median": sorted(w["p99_ms"] for w in windows)[len(windows) // 2],
        "p99_ms_max": max(w["p99_ms"] for w in windows),
        "rss_mb_start": round(samples[0][1], 1), "rss_mb_after_warmup": round(after[0][1], 1) if after else None,
        "rss_mb_end": round(samples[-1][1], 1), "rss_mb_max": round(max(r for _, r in samples), 1),
        "rss_slope_mb_per_10min_after_warmup": round(per_10min, 3),
        "statuses": statuses, "unintended": unintended,
        "socket_errors": sum(w["socket_errors"] for w in windows),
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    results = ROOT / "bench/results"
    results.mkdir(exist_ok=True)
    (results / "soak.json").write_text(json.dumps({"summary": summary, "windows": windows, "rss": samples}))
    (ROOT / "docs").mkdir(exist_ok=True)
    svg(samples, windows, ROOT / "docs/soak.svg")
    if unintended or summary["socket_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
