"""Virtual API keys as an OpenAI SDK user meets them: the key is `api_key`, refusals are
the SDK's own exception types."""
import openai
import pytest


def client(keyed, key):
    return openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=key, max_retries=0)


def test_a_key_works_and_its_stream_is_what_was_asked(keyed_bulwark):
    c = client(keyed_bulwark, keyed_bulwark.create_key("sdk"))
    r = c.chat.completions.create(model="remote-model", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "mock reply to: hi"
    # The gateway asks the upstream for usage to count tokens; the client did not ask,
    # so no usage-only chunk reaches it.
    chunks = list(c.chat.completions.create(
        model="remote-model", messages=[{"role": "user", "content": "a b"}], stream=True))
    assert chunks and all(ch.choices for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "mock reply to: a b"
    # Asked for, it arrives.
    chunks = list(c.chat.completions.create(
        model="remote-model", messages=[{"role": "user", "content": "a b"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3


def test_no_or_wrong_key_is_an_authentication_error(keyed_bulwark):
    for key in ["unused", "bk_000000000000_" + "0" * 64]:
        with pytest.raises(openai.AuthenticationError) as e:
            client(keyed_bulwark, key).models.list()
        assert e.value.code == "invalid_api_key"


def test_forbidden_model_and_rate_limit(keyed_bulwark):
    c = client(keyed_bulwark, keyed_bulwark.create_key("limited", "--model", "remote-model", "--rpm", "2"))
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    for _ in range(2):
        c.chat.completions.create(model="remote-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="remote-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
