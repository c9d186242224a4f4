"""The watermark through the gateway, with the OpenAI SDK: a marked model's answers
(JSON and streamed) say so in x-bulwark-watermark, in their signed receipt and in the
audit log, and POST /v1/watermark/detect and `bulwark watermark detect` find the mark
in their text; an unmarked model's answers, people's text and short text are not called
marked; a key created with --watermark asks for the mark on any local model; tool
calls and JSON under a schema are never marked, and marked answers are never cached."""
import json
import os
import pathlib
import subprocess
import tempfile

import anthropic
import httpx
import openai
import pytest

from conftest import BULWARK, GGUF_SHA256, MODEL, ROOT, _start, _stop, _wait_ready, cli

HUMAN = [l for l in (ROOT / "crates/bulwark-engine/tests/data/human_sentences.txt").read_text().splitlines()
         if not l.startswith("#")]
LONG = {"max_tokens": 220, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def gw():
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/data"
        for what in ("audit", "receipt"):
            cli(what, "keygen", "--out", f"{tmp}/{what}", data=data, check=True)
        cfg = pathlib.Path(tmp) / "bulwark.toml"
        cfg.write_text(f"""
[[local_models]]
name = "marked"
path = "{MODEL}"
sha256 = "{GGUF_SHA256}"
parallel = 2
watermark = true

[[local_models]]
name = "plain"
path = "{MODEL}"
sha256 = "{GGUF_SHA256}"
parallel = 2

[cache]
enabled = true

[audit]
public_key = "{tmp}/audit/audit.pub"

[receipts]
signing_key = "{tmp}/receipt/receipt.key"
""")
        keys = {name: cli("keys", "create", name, *extra, data=data, check=True).stdout.strip()
                for name, extra in (("marks", ["--watermark"]), ("plain", []))}
        env = {**os.environ, "BULWARK_DATA_DIR": data, "BULWARK_MODEL_DIR": str(ROOT / "models")}
        proc, url = _start([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)], env=env)
        try:
            _wait_ready(proc, url)
            yield {"url": url, "tmp": tmp, "data": data, "cfg": str(cfg), "keys": keys}
        finally:
            _stop(proc)


def client(gw, key="plain"):
    return openai.OpenAI(base_url=f"{gw['url']}/v1", api_key=gw["keys"][key], max_retries=0)


def ask(gw, model, key="plain", **kw):
    raw = client(gw, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        **{**LONG, **kw})
    return raw, raw.parse()


def detect(gw, text, model="marked", key="plain"):
    r = httpx.post(f"{gw['url']}/v1/watermark/detect", json={"text": text, "model": model},
                   headers={"authorization": f"Bearer {gw['keys'][key]}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_marked_answers_disclose_it_and_are_detected(gw):
    listed = {m.id: (m.model_extra or {}).get("watermark") for m in client(gw).models.list()}
    assert listed["marked"] is True and listed["plain"] is False, listed
    # A frequency penalty keeps this small model from looping (see the streamed test).
    raw, answer = ask(gw, "marked", seed=3, frequency_penalty=0.5)
    mark = raw.headers["x-bulwark-watermark"]
    assert mark.startswith("kgw-lefthash-v1; key=") and "gamma=0.25; delta=2" in mark
    text = answer.choices[0].message.content
    d = detect(gw, text)
    assert d["verdict"] == "watermarked" and d["p_value"] < 1e-6, d
    assert d["object"] == "watermark.detection" and d["tokens_scored"] >= 100 and d["key_id"] in mark, d
    # The receipt signs the disclosure.
    receipt = raw.headers["x-bulwark-receipt"]
    out = cli("receipt", "verify", "--key", f"{gw['tmp']}/receipt/receipt.pub", receipt, data=gw["data"], check=True)
    assert json.loads(out.stdout)["watermark"] == mark
    # So does the CLI, from a file and from stdin.
    path = pathlib.Path(gw["tmp"]) / "answer.txt"
    path.write_text(text)
    for arg, stdin in ((str(path), None), ("-", text)):
        out = subprocess.run([BULWARK, "watermark", "detect", "--config", gw["cfg"], "--model", "marked", arg],
                             env={**os.environ, "BULWARK_DATA_DIR": gw["data"], "BULWARK_MODEL_DIR": str(ROOT / "models")},
                             input=stdin, capture_output=True, text=True, check=True)
        report = json.loads(out.stdout)
        assert report["verdict"] == "watermarked" and report["p_value"] == pytest.approx(d["p_value"]), report


def test_streamed_answers_are_marked_too(gw):
    # A prompt and a frequency penalty that keep this small model from looping: the
    # detector scores each (previous, token) pair once, so a text that repeats one
    # phrase has few tokens to score (seen once on another CPU: 59 distinct pairs).
    with client(gw).chat.completions.with_streaming_response.create(
            model="marked", messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            stream=True, seed=4, frequency_penalty=0.5, **LONG) as resp:
        assert resp.headers["x-bulwark-watermark"].startswith("kgw-lefthash-v1")
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    d = detect(gw, text)
    assert d["verdict"] == "watermarked" and d["tokens_scored"] >= 100, (d, text)


def test_the_anthropic_sdk_gets_marked_answers_too(gw):
    # The Anthropic protocol has no ignore_eos, so the model may end a story early: each
    # answer must not read as unmarked, and their text together, once long enough to
    # decide, must read as marked (as a copy of several answers into one page would).
    c = anthropic.Anthropic(base_url=gw["url"], api_key=gw["keys"]["plain"], max_retries=0)
    texts = []
    for animal in ("dog", "cat", "horse", "goat"):
        raw = c.messages.with_raw_response.create(
            model="marked", max_tokens=300,
            messages=[{"role": "user", "content": f"Tell the long story of a {animal} that learns to swim."}],
            extra_body={"temperature": 0.8})
        assert raw.headers["x-bulwark-watermark"].startswith("kgw-lefthash-v1")
        texts.append(raw.parse().content[0].text)
        assert detect(gw, texts[-1])["verdict"] != "not_watermarked", texts[-1]
        d = detect(gw, "\n\n".join(texts))
        if d["verdict"] != "too_short":
            break
    assert d["verdict"] == "watermarked", (d, texts)


def test_unmarked_answers_and_human_text_are_not(gw):
    raw, answer = ask(gw, "plain", seed=5)
    assert "x-bulwark-watermark" not in raw.headers
    assert detect(gw, answer.choices[0].message.content)["verdict"] == "not_watermarked"
    human = detect(gw, " ".join(HUMAN[200:215]))
    assert human["verdict"] == "not_watermarked" and human["tokens_scored"] > 150, human
    short = detect(gw, "Thanks, that works.")
    assert short["verdict"] == "too_short" and short["tokens_scored"] < short["min_tokens"], short


def test_a_key_can_ask_for_the_mark(gw):
    raw, answer = ask(gw, "plain", key="marks", seed=6)
    assert raw.headers["x-bulwark-watermark"].startswith("kgw-lefthash-v1")
    d = detect(gw, answer.choices[0].message.content, model="plain")
    assert d["verdict"] == "watermarked", d


def test_structured_output_is_never_marked(gw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="marked", messages=[{"role": "user", "content": "Give a city and its country."}], max_tokens=100,
        # Strings bounded by the schema, so that the grammar completes the object well
        # within max_tokens whatever the model writes.
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                             "country": {"type": "string", "maxLength": 30}},
            "required": ["city", "country"]}}})
    assert "x-bulwark-watermark" not in raw.headers
    json.loads(raw.parse().choices[0].message.content)


def test_marked_answers_are_not_cached_and_the_audit_log_notes_the_mark(gw):
    for _ in range(2):
        raw, _ = ask(gw, "marked", seed=7, temperature=0, max_tokens=20, extra_body={})
        assert raw.headers["x-bulwark-cache"] == "miss"
        assert "x-bulwark-watermark" in raw.headers
    # A deterministic unmarked answer is cached; the same request from the key that
    # asks for the mark is not served from the cache.
    for expected in ("miss", "hit"):
        raw, _ = ask(gw, "plain", seed=8, temperature=0, max_tokens=20, extra_body={})
        assert raw.headers["x-bulwark-cache"] == expected
    raw, _ = ask(gw, "plain", key="marks", seed=8, temperature=0, max_tokens=20, extra_body={})
    assert raw.headers["x-bulwark-cache"] != "hit" and "x-bulwark-watermark" in raw.headers
    out = cli("audit", "export", "--key", f"{gw['tmp']}/audit/audit.key", "--config", gw["cfg"], data=gw["data"],
              check=True)
    records = [json.loads(l) for l in out.stdout.splitlines()]
    marked = [r for r in records if r.get("watermark")]
    assert marked and all(r["watermark"].startswith("kgw-lefthash-v1") for r in marked)
    assert any(r["model"] == "plain" and r.get("watermark") for r in records)
    assert all(not r.get("watermark") for r in records if r["model"] == "plain" and r["key_id"] and
               r["key_id"] != marked[0]["key_id"] and r["status"] == 200 and r.get("cache") == "hit")


def test_bad_detect_requests_get_clear_errors(gw):
    h = {"authorization": f"Bearer {gw['keys']['plain']}"}
    r = httpx.post(f"{gw['url']}/v1/watermark/detect", json={"model": "marked"}, headers=h)
    assert r.status_code == 400 and "text" in r.json()["error"]["message"]
    r = httpx.post(f"{gw['url']}/v1/watermark/detect", json={"text": "x", "model": "nope"}, headers=h)
    assert r.status_code == 404, r.text
    r = httpx.post(f"{gw['url']}/v1/watermark/detect", json={"text": "x"}, headers=h)
    assert r.status_code == 400 and "name the one" in r.json()["error"]["message"], r.text
    r = httpx.post(f"{gw['url']}/v1/watermark/detect", json={"text": "x"})
    assert r.status_code == 401
