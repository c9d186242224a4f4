"""The gateway in an air gap: in a network namespace with only loopback (`unshare -rn`),
the default model, the guard, keys, embeddings and the audit log all work, with
`[server] offline = true` (which refuses any upstream off the site; see
crates/bulwark/tests/local.rs, offline_mode_refuses_upstreams_off_the_site)."""
import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def test_everything_serves_with_only_loopback():
    out = subprocess.run(["unshare", "--map-root-user", "--net", sys.executable, str(HERE / "airgap_inner.py")],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-4000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["interfaces"] == ["lo"], seen
    assert seen["outside"] == "ENETUNREACH", seen
    assert seen["answer"], seen
    assert seen["injection"] == "prompt_injection_detected", seen
    assert seen["bad_key"] == 401, seen
    assert seen["embedding_dims"] == 384, seen
    assert seen["audit_verify"] == 0, seen["audit_output"]
