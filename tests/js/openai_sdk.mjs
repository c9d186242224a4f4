// The OpenAI JS SDK, unchanged, against Bulwark: a chat completion, a tool call with its
// round trip, and a stream, on the local engine. BULWARK_URL names the gateway; any
// failed check exits non-zero with what went wrong (tests/sdk/test_js_sdk.py runs it).
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.BULWARK_URL}/v1`, apiKey: "unused", maxRetries: 0 });
const model = "smollm2";

const chat = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Say hello." }], temperature: 0, max_tokens: 12,
});
assert.equal(chat.object, "chat.completion");
assert.ok(chat.choices[0].message.content.startsWith("Hello"), chat.choices[0].message.content);
assert.ok(chat.usage.completion_tokens > 0);

const weather = {
  type: "function",
  function: {
    name: "get_weather", description: "The weather now in a city.",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const messages = [{ role: "user", content: "Weather in Paris?" }];
const first = await client.chat.completions.create({
  model, messages, tools: [weather], tool_choice: "required", temperature: 0, max_tokens: 100,
});
assert.equal(first.choices[0].finish_reason, "tool_calls");
const call = first.choices[0].message.tool_calls[0];
assert.equal(call.function.name, "get_weather");
assert.equal(typeof JSON.parse(call.function.arguments).city, "string");
messages.push(first.choices[0].message, { role: "tool", tool_call_id: call.id, content: "18 C and sunny" });
const second = await client.chat.completions.create({
  model, messages, tools: [weather], tool_choice: "none", temperature: 0, max_tokens: 30,
});
assert.ok(second.choices[0].message.content);

const stream = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Say hello." }], temperature: 0, max_tokens: 12,
  stream: true, stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  usage = chunk.usage ?? usage;
}
assert.equal(text, chat.choices[0].message.content);
assert.equal(usage.completion_tokens, chat.usage.completion_tokens);
console.log("js sdk: ok");
