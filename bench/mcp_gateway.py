"""MCP gateway overhead: `tools/call` on the same upstream MCP server (tests/sdk/mcp/
notes_server.py, the official Python SDK) called directly (over stdio, and over
Streamable HTTP: the fair baseline, since a client of Bulwark speaks HTTP too) and
through Bulwark's /mcp (which runs that server over stdio itself), with the guard on and
off, in interleaved rounds in the same run. The tool returns SIZE bytes of prose (4 KB by
default), which the guard reads. Both clients are the official MCP Python SDK, one
connection each, calls one after another. Prints JSON lines: latency p50/p99 per target,
the added p50/p99 over the direct HTTP call, and Bulwark's CPU time per call (from /proc).

    .venv/bin/python bench/mcp_gateway.py            # CALLS=200 ROUNDS=5 SIZE=4096
    OTHER=/tmp/bulwark-base .venv/bin/python bench/mcp_gateway.py   # and another build

OTHER (a path to another build of `bulwark`, e.g. the previous commit's) adds that build,
guard on and off, to the same interleaved rounds, its rows named `other...`.

UPSTREAM_PROTOCOL (auto, 2026-07-28 or 2025-11-25) is the revision Bulwark speaks to
the server (`protocol` in its `[[mcp.servers]]` entry; auto settles on 2026-07-28).
"""
import contextlib
import json
import os
import socket
import subprocess
import statistics
import sys
import tempfile
import time

import anyio
import mcp
from mcp import StdioServerParameters

from common import BULWARK, ROOT, start_printing, stop, wait_http

CALLS = int(os.environ.get("CALLS", "200"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
SIZE = int(os.environ.get("SIZE", "4096"))
SERVER = ROOT / "tests/sdk/mcp/notes_server.py"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway(tmp, guard, binary=BULWARK, tag=""):
    cfg = f"{tmp}/bulwark{tag}-{guard}.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[[upstreams]]
name = "none"
base_url = "http://127.0.0.1:9/v1"
models = {{ "m" = "m" }}

[guard]
enabled = {"true" if guard else "false"}

[mcp]
anonymous_tools = ["*"]

[[mcp.servers]]
name = "notes"
command = [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]
env = {{ NOTES_DIR = {json.dumps(tmp)} }}
auto_approve = true
protocol = "{os.environ.get('UPSTREAM_PROTOCOL', 'auto')}"
""")
    env = {**os.environ, "BULWARK_DATA_DIR": f"{tmp}/data{tag}-{guard}"}
    p, url = start_printing([binary, "serve", "--listen", "127.0.0.1:0", "--config", cfg], env=env)
    wait_http(f"{url}/readyz")
    return p, url


async def timed(client, name, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await client.call_tool(name, {"size": SIZE})
        out.append(time.perf_counter() - t)
        assert not r.is_error, r
    return out


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        procs = {"bulwark": gateway(tmp, True), "bulwark_guard_off": gateway(tmp, False)}
        if os.environ.get("OTHER"):
            procs["other"] = gateway(tmp, True, os.environ["OTHER"], "-other")
            procs["other_guard_off"] = gateway(tmp, False, os.environ["OTHER"], "-other")
        try:
            direct = mcp.Client(StdioServerParameters(command=sys.executable, args=[str(SERVER)],
                                                      env={**os.environ, "NOTES_DIR": tmp}), cache=None)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            http_server = subprocess.Popen([sys.executable, str(SERVER)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL,
                                           env={**os.environ, "NOTES_DIR": tmp, "NOTES_HTTP_PORT": str(port)})
            deadline = time.time() + 30
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0 and time.time() < deadline:
                time.sleep(0.1)
            direct_http = mcp.Client(f"http://127.0.0.1:{port}/mcp", cache=None)
            clients = {"direct": (direct, "report"), "direct_http": (direct_http, "report")}
            for name, (_, url) in procs.items():
                clients[name] = (mcp.Client(f"{url}/mcp", cache=None), "notes__report")
            samples = {k: [] for k in clients}
            cpu = {k: 0.0 for k in procs}
            async with contextlib.AsyncExitStack() as stack:
                for c, _ in clients.values():
                    await stack.enter_async_context(c)
                for name, (c, tool) in clients.items():
                    await timed(c, tool, 20)  # warm up
                for _ in range(ROUNDS):
                    for name, (c, tool) in clients.items():
                        before = cpu_seconds(procs[name][0].pid) if name in procs else 0
                        samples[name] += await timed(c, tool, CALLS)
                        if name in procs:
                            cpu[name] += cpu_seconds(procs[name][0].pid) - before
            http_server.terminate()
            q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] * 1000
            base = {p: q(samples["direct_http"], p) for p in (50, 99)}
            for name, xs in samples.items():
                row = {"target": name, "calls": len(xs), "result_bytes": SIZE,
                       "p50_ms": round(q(xs, 50), 3), "p99_ms": round(q(xs, 99), 3)}
                if name in procs:
                    row["added_p50_ms"] = round(q(xs, 50) - base[50], 3)
                    row["added_p99_ms"] = round(q(xs, 99) - base[99], 3)
                    row["gateway_cpu_ms_per_call"] = round(cpu[name] / len(xs) * 1000, 3)
                print(json.dumps(row), flush=True)
        finally:
            for p, _ in procs.values():
                stop(p)


anyio.run(main)
