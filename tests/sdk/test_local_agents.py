"""Tools and structured output on the local engine, with the real clients: the OpenAI SDK
(`chat.completions.parse` with a Pydantic model, a tool round trip, streamed tool calls),
the Anthropic SDK (a forced `tool_use`, streamed `input_json_delta`), and LangChain
(`bind_tools`, `with_structured_output`). The default model is tiny, so the tests assert
what the gateway guarantees (well-formed calls of tools that exist, output that validates
against the schema), not what a larger model would choose to say."""
import json

import anthropic
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False},
    },
}


@pytest.fixture
def oai(bulwark):
    return openai.OpenAI(base_url=f"{bulwark}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def claude(bulwark):
    return anthropic.Anthropic(base_url=bulwark, api_key="unused", max_retries=0)


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)
    languages: list[str] = Field(max_length=3)


def test_parse_with_a_pydantic_model(oai):
    # The SDK sends a strict json_schema and validates the answer with Pydantic itself.
    for seed in (1, 2, 3):
        r = oai.chat.completions.parse(
            model="smollm2", messages=[{"role": "user", "content": "Describe a person."}],
            response_format=Person, temperature=0.8, seed=seed, max_tokens=200,
        )
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(r.choices[0].message.parsed, Person)


def test_json_object_streams_as_it_is_decoded(oai):
    stream = oai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Give me a JSON object with a name and an age."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=600, stream=True,
    )
    pieces, finish = [], None
    for c in stream:
        if c.choices:
            pieces += [c.choices[0].delta.content] if c.choices[0].delta.content else []
            finish = c.choices[0].finish_reason or finish
    assert len(pieces) > 1
    assert finish == "stop"
    assert isinstance(json.loads("".join(pieces)), dict)


def test_tool_round_trip(oai):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = oai.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER_TOOL],
                                        tool_choice="required", temperature=0, max_tokens=100)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    final = oai.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER_TOOL],
                                        tool_choice="none", temperature=0, max_tokens=30)
    assert final.choices[0].message.content
    assert not final.choices[0].message.tool_calls


def test_auto_tool_choice_answers_or_calls_but_never_invents_a_tool(oai):
    for seed in range(4):
        r = oai.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Hi! How is the weather in Rome?"}],
            tools=[WEATHER_TOOL], temperature=1.0, seed=seed, max_tokens=120,
        )
        m = r.choices[0].message
        if r.choices[0].finish_reason == "tool_calls":
            assert m.tool_calls and all(c.function.name == "get_weather" for c in m.tool_calls)
            assert len({(c.function.name, c.function.arguments) for c in m.tool_calls}) == len(m.tool_calls)
        else:
            assert r.choices[0].finish_reason in ("stop", "length") and not m.tool_calls


def test_streamed_tool_calls_accumulate_like_openais(oai):
    stream = oai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=100, stream=True, stream_options={"include_usage": True},
    )
    calls, finish, usage = {}, None, None
    for c in stream:
        usage = c.usage or usage
        for ch in c.choices:
            for d in ch.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = d.id or slot["id"]
                slot["name"] += d.function.name or ""
                slot["arguments"] += d.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert "city" in json.loads(calls[0]["arguments"])
    assert usage.completion_tokens > 0


def test_unknown_tool_result_and_bad_schema_are_clear_errors(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="smollm2", messages=[
            {"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_nope", "content": "x"}])
    assert "call_nope" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}],
                                    response_format={"type": "json_schema", "json_schema": {
                                        "name": "x", "schema": {"$ref": "https://example.invalid/s.json"}}})
    assert "cannot express" in e.value.message and e.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}],
                                    tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice"


def test_anthropic_forced_tool_use_on_the_local_engine(claude):
    tool = {"name": "get_weather", "description": "The weather now in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"]}
    # Greedy, so that the tiny model's call is the same every run (sampled, it may write a
    # city name until max_tokens, which the answer then says: stop_reason max_tokens).
    r = claude.messages.create(model="smollm2", max_tokens=300, tools=[tool], extra_body={"temperature": 0},
                               tool_choice={"type": "tool", "name": "get_weather"},
                               messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert r.stop_reason == "tool_use"
    use = [b for b in r.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "get_weather" and isinstance(use[0].input["city"], str)
    with claude.messages.stream(model="smollm2", max_tokens=300, tools=[tool], tool_choice={"type": "any"},
                                extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert "input_json" in kinds or "content_block_delta" in kinds
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    assert isinstance(final.content[-1].input["city"], str)


def test_anthropic_schema_the_grammar_cannot_express_is_an_anthropic_error(claude):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="smollm2", max_tokens=20, messages=[{"role": "user", "content": "hi"}],
                               extra_body={"output_config": {"format": {
                                   "type": "json_schema", "schema": {"$ref": "https://example.invalid/s.json"}}}})
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "cannot express" in e.value.body["error"]["message"]


@tool
def get_weather(city: str) -> str:
    """The weather now in a city."""
    return "18 C and sunny"


class Weather(BaseModel):
    city: str
    celsius: int


def test_langchain_bind_tools_and_structured_output_on_the_local_engine(bulwark):
    llm = ChatOpenAI(base_url=f"{bulwark}/v1", api_key="unused", model="smollm2", max_retries=0,
                     temperature=0, max_tokens=100)
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([HumanMessage("Weather in Paris?")])
    assert first.tool_calls and first.tool_calls[0]["name"] == "get_weather"
    call = first.tool_calls[0]
    final = llm.invoke([HumanMessage("Weather in Paris?"), first,
                        ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])])
    assert final.content
    got = llm.with_structured_output(Weather).invoke("Weather in Paris, in Celsius?")
    assert isinstance(got, Weather)
