"""The OpenAI Python SDK's Responses API (`responses.create`, `responses.stream`,
`responses.parse`), unchanged, against Bulwark's `/v1/responses`: on the local engine
(text, function tools, structured output) and on an upstream by translation."""
import json

import openai
import pytest
from pydantic import BaseModel

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather now in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


@pytest.fixture
def client(bulwark):
    return openai.OpenAI(base_url=f"{bulwark}/v1", api_key="unused", max_retries=0)


def test_create_on_the_local_engine(client):
    r = client.responses.create(model="smollm2", input="Say hello.", instructions="You are terse.",
                                max_output_tokens=12, temperature=0)
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant" and r.output_text
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_stream_matches_the_whole_answer(client):
    kwargs = dict(model="smollm2", input="Say hello.", max_output_tokens=80, temperature=0)
    with client.responses.stream(**kwargs) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == client.responses.create(**kwargs).output_text
    assert final.usage.output_tokens > 0


def test_function_tool_round_trip(client):
    first = client.responses.create(model="smollm2", input="Weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", temperature=0, max_output_tokens=100)
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    args = json.loads(calls[0].arguments)
    assert isinstance(args["city"], str)
    second = client.responses.create(
        model="smollm2", tools=[WEATHER], tool_choice="none", temperature=0, max_output_tokens=30,
        input=[{"role": "user", "content": "Weather in Paris?"}, calls[0].model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C and sunny"}])
    assert second.output_text


def test_streamed_function_call(client):
    with client.responses.stream(model="smollm2", input="Weather in Oslo?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 temperature=0, max_output_tokens=100) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    call = final.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert "city" in json.loads(call.arguments)


class City(BaseModel):
    name: str
    country: str


def test_parse_structured_output(client):
    r = client.responses.parse(model="smollm2", input="Name a city.", text_format=City, temperature=0,
                               max_output_tokens=100)
    assert isinstance(r.output_parsed, City)


def test_upstream_by_translation(client):
    r = client.responses.create(model="remote-model", input="ping")
    assert r.output_text == "mock reply to: ping"
    assert r.status == "completed"
    with client.responses.stream(model="remote-model", input="ping") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == "mock reply to: ping"


def test_stored_state_is_a_clear_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="smollm2", input="hi", previous_response_id="resp_123")
    assert "stores no responses" in e.value.message
