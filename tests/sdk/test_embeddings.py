"""`/v1/embeddings` with the OpenAI SDK, unchanged: the in-process all-MiniLM-L6-v2 served
out of the box, checked against the model's reference implementation (vectors made by
sentence-transformers with bench/embedding_reference.py, in tests/sdk/data), in every
input and encoding shape; and an upstream's embeddings passed through."""
import base64
import json
import pathlib
import struct

import openai
import pytest

REFERENCE = json.loads((pathlib.Path(__file__).parent / "data/minilm_reference.json").read_text())
MODEL = "all-minilm-l6-v2"


@pytest.fixture
def client(bulwark):
    return openai.OpenAI(base_url=f"{bulwark}/v1", api_key="unused", max_retries=0)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))


def test_vectors_match_the_reference_implementation(client):
    texts = [c["text"] for c in REFERENCE["cases"]]
    r = client.embeddings.create(model=MODEL, input=texts)
    assert r.model == MODEL and [d.index for d in r.data] == list(range(len(texts)))
    worst = min(cosine(d.embedding, c["vector"]) for d, c in zip(r.data, REFERENCE["cases"]))
    assert worst >= 0.999, worst
    assert all(len(d.embedding) == 384 for d in r.data)
    assert abs(sum(x * x for x in r.data[0].embedding) - 1) < 1e-4
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(texts)


def test_similar_texts_are_closer(client):
    a, b, c = (d.embedding for d in client.embeddings.create(
        model=MODEL, input=["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell."]).data)
    assert cosine(a, b) > cosine(a, c) + 0.3


def test_base64_and_token_inputs_give_the_same_vectors(client):
    text = REFERENCE["cases"][1]["text"]
    plain = client.embeddings.create(model=MODEL, input=text).data[0].embedding
    # The SDK asks for base64 by default and decodes it itself; decode by hand too.
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=text, encoding_format="base64")
    b64 = json.loads(raw.text)["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(base64.b64decode(b64)) // 4}f", base64.b64decode(b64))
    assert max(abs(x - y) for x, y in zip(plain, decoded)) < 1e-6
    # Token ids of the model's own vocabulary (bert-base-uncased word pieces).
    ids = [1037, 2158, 2003, 2652, 2858, 1012]  # "a man is playing guitar."
    by_ids = client.embeddings.create(model=MODEL, input=[ids]).data[0].embedding
    by_text = client.embeddings.create(model=MODEL, input="a man is playing guitar.").data[0].embedding
    assert cosine(by_ids, by_text) > 0.9999


def test_bad_input_is_a_clear_error(client):
    for kwargs, param in [
        (dict(input=[]), "input"),
        (dict(input="x", dimensions=128), "dimensions"),
        (dict(input=[[10**9]]), "input"),
        (dict(input="x", encoding_format="int8"), "encoding_format"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=MODEL, **kwargs)
        assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="smollm2", input="x")
    assert "chat model" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "embedding model" in e.value.message


def test_the_model_is_listed(client):
    m = client.models.retrieve(MODEL)
    assert m.served_by == "local" and m.verification == "pinned-digest"


def test_an_upstreams_embeddings_pass_through_the_guard(client, mock_upstream):
    import urllib.request

    email = "jane.doe@example.com"
    r = client.embeddings.create(model="remote-model", input=["plain text", f"mail {email}"],
                                 encoding_format="float")
    assert [len(d.embedding) for d in r.data] == [4, 4] and r.usage.total_tokens == 4
    with urllib.request.urlopen(f"{mock_upstream}/_mock/received") as resp:
        sent = json.load(resp)["received"][-1]
    assert sent["model"] == "mock-large" and sent["input"][0] == "plain text"
    assert email not in json.dumps(sent) and "[EMAIL_1]" in sent["input"][1]
