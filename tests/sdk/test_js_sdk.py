"""The OpenAI JS SDK (npm `openai`, pinned in tests/js/package-lock.json), unchanged,
against Bulwark: `tests/js/openai_sdk.mjs` makes the calls and checks the answers."""
import os
import pathlib
import subprocess

JS = pathlib.Path(__file__).resolve().parents[1] / "js"


def test_openai_js_sdk(bulwark):
    assert (JS / "node_modules/openai").is_dir(), "run `npm ci --prefix tests/js` (scripts/test.sh does)"
    out = subprocess.run(["node", str(JS / "openai_sdk.mjs")], env={**os.environ, "BULWARK_URL": bulwark},
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "js sdk: ok" in out.stdout
