"""Supply chain against the tools of the field: a model directory signed by the OpenSSF
`model_signing` CLI is verified by Bulwark (and a flipped byte in any file fails,
naming the file), and Bulwark's AI-BOM validates against the official CycloneDX 1.6
JSON schema."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from conftest import BULWARK, MODEL

VENV_BIN = pathlib.Path(sys.executable).parent


def run(*argv, env=None, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture
def signed_model(tmp_path):
    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "weights.safetensors").write_bytes(os.urandom(4096))
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    key, pub = tmp_path / "key.pem", tmp_path / "pub.pem"
    run("openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key))
    run("openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub))
    sig = tmp_path / "model.sig"
    run(str(VENV_BIN / "model_signing"), "sign", "key", str(model), "--private_key", str(key), "--signature", str(sig))
    return model, sig, pub


def verify(model, sig, pub):
    return run(BULWARK, "models", "verify-bundle", str(model), "--signature", str(sig), "--key", str(pub), check=False,
               env={**os.environ, "RUST_BACKTRACE": "0"})


def test_model_signing_bundles_verify(signed_model):
    model, sig, pub = signed_model
    p = verify(model, sig, pub)
    assert p.returncode == 0, p.stderr
    assert "3 files signed" in p.stdout
    # The signing tool's own verifier agrees.
    run(str(VENV_BIN / "model_signing"), "verify", "key", str(model), "--signature", str(sig), "--public_key", str(pub))


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json", "tokenizer/vocab.json"])
def test_a_flipped_byte_in_any_file_fails_naming_it(signed_model, name):
    model, sig, pub = signed_model
    f = model / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    p = verify(model, sig, pub)
    assert p.returncode != 0
    assert f"{name}: SHA-256" in p.stderr and "changed after signing" in p.stderr, p.stderr


def test_another_key_or_an_added_file_fails(signed_model, tmp_path):
    model, sig, pub = signed_model
    other = tmp_path / "other.pem"
    run("openssl", "ecparam", "-genkey", "-name", "secp384r1", "-noout", "-out", str(tmp_path / "k2.pem"))
    run("openssl", "ec", "-in", str(tmp_path / "k2.pem"), "-pubout", "-out", str(other))
    p = verify(model, sig, other)
    assert p.returncode != 0 and "does not verify" in p.stderr, p.stderr
    (model / "extra.py").write_text("import os")
    p = verify(model, sig, pub)
    assert p.returncode != 0 and "extra.py: in the model directory but not covered" in p.stderr, p.stderr


def test_the_ai_bom_validates_against_cyclonedx_1_6(tmp_path):
    assert MODEL.exists(), f"default model missing at {MODEL}: run scripts/fetch-model.sh"
    env = {**os.environ, "BULWARK_DATA_DIR": str(tmp_path / "data"), "RUST_BACKTRACE": "0"}
    run(BULWARK, "models", "add", str(MODEL), "--name", "smollm2", env=env)
    out = tmp_path / "bom.json"
    run(BULWARK, "models", "bom", "--out", str(out), env=env)
    text = out.read_text()
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors
    bom = json.loads(text)
    model = next(c for c in bom["components"] if c["type"] == "machine-learning-model")
    assert model["name"] == "smollm2"
    assert {"alg": "SHA-256", "content": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"} in model["hashes"]
    assert model["modelCard"]["modelParameters"]["architectureFamily"] == "llama"
    assert any(c.get("purl", "").startswith("pkg:cargo/llama-cpp-2@") for c in bom["components"])
