"""Fixtures that start the real processes on loopback: the mock upstream and bulwark.

Both binaries come from the release build (`cargo build --release --workspace`); their
paths can be overridden with BULWARK_BIN and MOCK_UPSTREAM_BIN.
"""
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BULWARK = os.environ.get("BULWARK_BIN", str(ROOT / "target/release/bulwark"))
MOCK = os.environ.get("MOCK_UPSTREAM_BIN", str(ROOT / "target/release/bulwark-mock-upstream"))
MODEL = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _start(argv, env=None):
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env
    )
    line = proc.stdout.readline().strip()
    url = line.rsplit(" ", 1)[-1]
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start: {line!r}")
    return proc, url


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def mock_upstream():
    proc, url = _start([MOCK, "127.0.0.1:0"], env={**os.environ, "MOCK_RECORD": "1"})
    yield url
    _stop(proc)


@pytest.fixture(scope="session")
def bulwark(mock_upstream):
    assert MODEL.exists(), f"default model missing at {MODEL}: run scripts/fetch-model.sh"
    config = f"""
[[local_models]]
name = "smollm2"
path = "{MODEL}"
sha256 = "{GGUF_SHA256}"
parallel = 2

[[upstreams]]
name = "mock"
base_url = "{mock_upstream}/v1"
api_key_env = "MOCK_UPSTREAM_KEY"
models = {{ "remote-model" = "mock-large", "remote-tools" = "tool-caller" }}

[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{mock_upstream}/v1"
api_key_env = "MOCK_ANTHROPIC_KEY"
models = {{ "claude-model" = "mock-claude", "claude-tools" = "claude-tools" }}
"""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pathlib.Path(tmp) / "bulwark.toml"
        cfg.write_text(config)
        env = {**os.environ, "MOCK_UPSTREAM_KEY": "sk-upstream-test", "MOCK_ANTHROPIC_KEY": "sk-ant-upstream-test",
               "BULWARK_DATA_DIR": f"{tmp}/data",
               "BULWARK_MODEL_DIR": str(ROOT / "models")}
        proc, url = _start([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)], env=env)
        _wait_ready(proc, url)
        yield url
        _stop(proc)


def _wait_ready(proc, url):
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz") as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            _stop(proc)
            raise RuntimeError("bulwark never became ready")
        time.sleep(0.05)


def cli(*args, data, **kw):
    """Runs the bulwark CLI with `data` as its data directory, no input, output captured."""
    return subprocess.run([BULWARK, *args], env={**os.environ, "BULWARK_DATA_DIR": data}, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, **kw)


class Keyed:
    """A gateway in front of the mock upstream whose keys are made with the real CLI."""

    def __init__(self, url, data):
        self.url = url
        self.data = data

    def create_key(self, *args):
        return cli("keys", "create", *args, data=self.data, check=True).stdout.strip()


@pytest.fixture(scope="session")
def keyed_bulwark(mock_upstream):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pathlib.Path(tmp) / "bulwark.toml"
        cfg.write_text(f"""
[[upstreams]]
name = "mock"
base_url = "{mock_upstream}/v1"
api_key_env = "MOCK_UPSTREAM_KEY"
models = {{ "remote-model" = "mock-large" }}
""")
        data = f"{tmp}/data"
        keyed = Keyed(None, data)
        keyed.create_key("first")
        env = {**os.environ, "MOCK_UPSTREAM_KEY": "sk-upstream-test", "BULWARK_DATA_DIR": data,
               "BULWARK_MODEL_DIR": str(ROOT / "models")}
        proc, url = _start([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)], env=env)
        _wait_ready(proc, url)
        keyed.url = url
        yield keyed
        _stop(proc)
