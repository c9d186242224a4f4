"""LangChain's ChatOpenAI and ChatAnthropic, unchanged, completing a small agent step
against Bulwark: a tool call, its result, the answer; and structured output."""
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel


@tool
def get_weather(city: str) -> str:
    """The weather now in a city."""
    return "18 C and sunny"


def agent_step(llm):
    """One round trip: the model calls the tool, the tool answers, the model says it."""
    bound = llm.bind_tools([get_weather])
    messages = [HumanMessage("Weather in Paris?")]
    first = bound.invoke(messages)
    assert first.tool_calls, first
    call = first.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = bound.invoke(messages)
    return final.text if isinstance(final.text, str) else final.text()


def test_chat_openai_agent_step(bulwark):
    llm = ChatOpenAI(base_url=f"{bulwark}/v1", api_key="unused", model="remote-tools", max_retries=0)
    assert agent_step(llm) == "The tool said: 18 C and sunny"


def test_chat_anthropic_agent_step(bulwark):
    llm = ChatAnthropic(base_url=bulwark, api_key="unused", model="remote-tools", max_retries=0, max_tokens=100)
    assert agent_step(llm) == "The tool said: 18 C and sunny"


def test_chat_anthropic_on_the_local_engine(bulwark):
    llm = ChatAnthropic(base_url=bulwark, api_key="unused", model="smollm2", max_tokens=12, max_retries=0)
    reply = llm.invoke("Say hello.")
    assert reply.text if isinstance(reply.text, str) else reply.text()
    assert reply.usage_metadata["output_tokens"] > 0


class Weather(BaseModel):
    city: str


def test_structured_output_through_a_tool(bulwark):
    llm = ChatOpenAI(base_url=f"{bulwark}/v1", api_key="unused", model="remote-tools", max_retries=0)
    got = llm.with_structured_output(Weather, method="function_calling").invoke("Weather in Paris?")
    assert got == Weather(city="Paris")
