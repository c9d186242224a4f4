"""Shared helpers for the benchmarks: start processes on loopback and wait for them."""
import os
import pathlib
import subprocess
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
# BULWARK_BIN measures another build (e.g. the previous commit's) with the same harness.
BULWARK = os.environ.get("BULWARK_BIN") or str(ROOT / "target/release/bulwark")
MOCK = str(ROOT / "target/release/bulwark-mock-upstream")
MODEL = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def start_printing(argv, env=None, cwd=None):
    """Starts a process that prints `... http(s)://ADDR` as its first stdout line."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         text=True, env=env, cwd=cwd)
    line = p.stdout.readline().strip()
    url = line.rsplit(" ", 1)[-1]
    if not url.startswith(("http://", "https://")):
        p.kill()
        raise RuntimeError(f"{argv[0]} did not start: {line!r}")
    return p, url


def wait_http(url, timeout=120.0, ok=(200,)):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
