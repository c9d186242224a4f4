"""Gateway overhead: the mock upstream hit directly, through Bulwark, and through LiteLLM's
proxy, with wrk at several concurrencies, all in the same run. Prints JSON lines."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from common import BULWARK, MOCK, ROOT, start_printing, stop, wait_http

DURATION = os.environ.get("BENCH_DURATION", "10s")
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,16,64").split(",")]
# Which targets to measure (comma-separated names, e.g. "direct,bulwark,bulwark_tls");
# all by default. `direct` is always kept: it is the baseline.
ONLY = {t for t in os.environ.get("BENCH_TARGETS", "").split(",") if t}
LITELLM = os.environ.get("LITELLM_BIN")
# BENCH_PIN=1: every gateway (and LiteLLM) pinned to core 1, wrk and the mock upstream to
# core 0 (`taskset`), so that the gateway's own CPU cost per request shows as its
# saturation throughput on one core, undisturbed by the load generator.
PIN = os.environ.get("BENCH_PIN") == "1"


def pin(pid, core):
    """Pins every thread of a running process (and those it starts later) to a core."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True, capture_output=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process (all threads), from /proc."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MESSAGES_BODY = '{"model":"bench","max_tokens":8,"messages":[{"role":"user","content":"ping"}]}'
GREEDY_BODY = '{"model":"bench","messages":[{"role":"user","content":"ping"}],"max_tokens":8,"temperature":0}'


def wrk(url, conns, body=None, duration=None, key=None):
    threads = 1 if conns == 1 else 2
    env = dict(os.environ)
    if body:
        env["WRK_BODY"] = body
    if key:
        env["WRK_KEY"] = key
    if PIN:
        threads = 1
    out = subprocess.run(
        (["taskset", "-c", "0"] if PIN else []) + ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration or DURATION}", "--latency", "-s",
         str(ROOT / "bench/post.lua"), url],
        capture_output=True, text=True, check=True, env=env).stdout
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    r = json.loads(line[5:])
    if r["non2xx"] or r["errors"]:
        raise SystemExit(f"{url}: {r['non2xx']} non-2xx answers, {r['errors']} socket errors")
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def main():
    tmp = pathlib.Path(tempfile.mkdtemp())
    mock, mock_url = start_printing([MOCK, "127.0.0.1:0"])
    cfg = tmp / "bulwark.toml"
    # Everything off: no keys, default policy, no cache, guard off.
    cfg.write_text(f'[[upstreams]]\nname = "mock"\nbase_url = "{mock_url}/v1"\nmodels = {{ "bench" = "mock" }}\n'
                   '[guard]\nenabled = false\n')
    # The guard on (its defaults), nothing else.
    gcfg = tmp / "bulwark-guard.toml"
    gcfg.write_text(f'[[upstreams]]\nname = "mock"\nbase_url = "{mock_url}/v1"\nmodels = {{ "bench" = "mock" }}\n')
    quiet = {**os.environ, "BULWARK_LOG": "warn", "BULWARK_DATA_DIR": str(tmp / "data"),
             "BULWARK_MODEL_DIR": str(ROOT / "models")}
    gw, gw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)], env=quiet)
    # The same gateway with the response cache on, hit by a deterministic request that is
    # answered from memory after the first time.
    ccfg = tmp / "bulwark-cache.toml"
    ccfg.write_text(cfg.read_text() + "[cache]\nenabled = true\n")
    cgw, cgw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(ccfg)],
                                  env={**quiet, "BULWARK_DATA_DIR": str(tmp / "cache-data")})
    # Everything on: an API key with request, token and budget limits (never reached),
    # a route whose candidate is judged by a policy with jurisdiction rules, the cache on
    # (the benchmark's request is not deterministic, so it is looked at and bypassed).
    kdata = tmp / "keys-data"
    kcfg = tmp / "bulwark-keys.toml"
    kcfg.write_text(
        f'[[upstreams]]\nname = "mock"\nbase_url = "{mock_url}/v1"\njurisdiction = "FR"\ntrust = "private"\n'
        'models = { "mock-fr" = "mock" }\n[[routes]]\nmodel = "bench"\ncandidates = ["mock-fr"]\n'
        '[policy.rules.public]\ntrust = ["host", "private"]\njurisdictions = ["EU"]\n'
        '[cache]\nenabled = true\n[guard]\nenabled = false\n')
    kenv = {**os.environ, "BULWARK_LOG": "warn", "BULWARK_DATA_DIR": str(kdata)}
    key = subprocess.run([BULWARK, "keys", "create", "bench", "--rpm", "1000000000", "--tpm", "1000000000000",
                          "--budget-tokens", "1000000000000000"], env=kenv, capture_output=True, text=True,
                         check=True).stdout.strip()
    kgw, kgw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(kcfg)], env=kenv)
    # The audit log on (batch durability, its default), guard off, nothing else.
    adata = tmp / "audit-data"
    subprocess.run([BULWARK, "audit", "keygen", "--out", str(tmp / "auditor")], check=True, capture_output=True)
    acfg = tmp / "bulwark-audit.toml"
    acfg.write_text(cfg.read_text() + f'[audit]\npublic_key = "{tmp / "auditor" / "audit.pub"}"\n')
    agw, agw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(acfg)],
                                  env={**quiet, "BULWARK_DATA_DIR": str(adata)})
    ggw, ggw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(gcfg)],
                                  env={**quiet, "BULWARK_DATA_DIR": str(tmp / "guard-data")})
    # The plain gateway behind its TLS listener (wrk negotiates TLS 1.3 with X25519;
    # keep-alive connections, so this is the record layer's cost, not handshakes').
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=localhost", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                   check=True, capture_output=True)
    tcfg = tmp / "bulwark-tls.toml"
    tcfg.write_text(f'[server.tls]\ncert = "{tmp / "cert.pem"}"\nkey = "{tmp / "key.pem"}"\n' + cfg.read_text())
    tgw, tgw_url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(tcfg)],
                                  env={**quiet, "BULWARK_DATA_DIR": str(tmp / "tls-data")})
    targets = {"direct": f"{mock_url}/v1/chat/completions", "bulwark": f"{gw_url}/v1/chat/completions",
               "bulwark_guard": f"{ggw_url}/v1/chat/completions",
               "bulwark_audit": f"{agw_url}/v1/chat/completions",
               "bulwark_tls": f"{tgw_url}/v1/chat/completions",
               "bulwark_keys_policy": f"{kgw_url}/v1/chat/completions",
               "bulwark_cache_hit": f"{cgw_url}/v1/chat/completions"}
    pids = {"direct": mock.pid, "bulwark": gw.pid, "bulwark_guard": ggw.pid, "bulwark_audit": agw.pid,
            "bulwark_tls": tgw.pid,
            "bulwark_keys_policy": kgw.pid, "bulwark_cache_hit": cgw.pid}
    # The same plain gateway through the Anthropic Messages API: translated into the chat
    # form and back (the mock speaks OpenAI).
    targets["bulwark_messages"] = f"{gw_url}/v1/messages"
    pids["bulwark_messages"] = gw.pid
    bodies = {"bulwark_cache_hit": GREEDY_BODY, "bulwark_messages": MESSAGES_BODY}
    keys = {"bulwark_keys_policy": key}
    # Whose CPU time is charged to a request: the mock's for direct, the gateway's otherwise.

    procs = [mock, gw, ggw, agw, tgw, kgw, cgw]
    if LITELLM:
        port = free_port()
        lcfg = tmp / "litellm.yaml"
        lcfg.write_text(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/mock\n"
            f"      api_base: {mock_url}/v1\n      api_key: sk-bench\n"
            "litellm_settings:\n  telemetry: false\n")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        lp = subprocess.Popen([LITELLM, "--config", str(lcfg), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        procs.append(lp)
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
        targets["litellm"] = f"http://127.0.0.1:{port}/v1/chat/completions"
        pids["litellm"] = lp.pid
    if ONLY:
        targets = {k: v for k, v in targets.items() if k == "direct" or k in ONLY}
    if PIN:
        for name, pid in pids.items():
            pin(pid, 0 if name == "direct" else 1)
    print(json.dumps({"targets": targets}), file=sys.stderr, flush=True)
    try:
        for name, url in targets.items():  # warm-up: connections, pools, the cache entry
            wrk(url, 4, bodies.get(name), duration="2s", key=keys.get(name))
        for c in CONCURRENCY:
            row = {"concurrency": c}
            for name, url in targets.items():
                before = cpu_seconds(pids[name])
                row[name] = wrk(url, c, bodies.get(name), key=keys.get(name))
                row[name]["cpu_us_per_request"] = (cpu_seconds(pids[name]) - before) * 1e6 / row[name]["requests"]
            for name in targets:
                if name == "direct":
                    continue
                row[f"{name}_added_p50_ms"] = (row[name]["p50_us"] - row["direct"]["p50_us"]) / 1000
                row[f"{name}_added_p99_ms"] = (row[name]["p99_us"] - row["direct"]["p99_us"]) / 1000
                row[f"{name}_throughput_ratio"] = row[name]["rps"] / row["direct"]["rps"]
            print(json.dumps(row), flush=True)
    finally:
        for p in procs:
            stop(p)


if __name__ == "__main__":
    main()
