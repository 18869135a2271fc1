"""The official `openai` Python client against userrl's /v1 API: a plain answer, a streamed one, and a forced
tool call. Run by the Rust test `openai::tests::openai_python_client_works` as
`python3 openai_client.py <base_url> <model>`; prints one `... ok` line per check and exits non-zero on failure."""

import json
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)

listed = [m.id for m in client.models.list()]
assert model in listed, listed

question = [{"role": "user", "content": "What is the capital of France?"}]
plain = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=16)
answer = plain.choices[0].message.content
assert "Paris" in answer, answer
assert plain.choices[0].finish_reason in ("stop", "length"), plain.choices[0].finish_reason
assert plain.usage.completion_tokens > 0 and plain.usage.total_tokens > plain.usage.prompt_tokens
print("plain ok:", repr(answer))

pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model=model, messages=question, temperature=0, max_tokens=16, stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
assert "".join(pieces) == answer, (pieces, answer)
assert len(pieces) > 1, pieces
assert finish == plain.choices[0].finish_reason, finish
assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens, usage
print("stream ok:", len(pieces), "deltas")

tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
called = client.chat.completions.create(
    model=model, temperature=0, max_tokens=40, tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
)
choice = called.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.type == "function" and call.function.name == "get_weather", call
assert isinstance(json.loads(call.function.arguments), dict), call.function.arguments

# The call and its result go back in the history; the model answers in text.
follow = client.chat.completions.create(
    model=model, temperature=0, max_tokens=24, tools=tools,
    messages=[
        {"role": "user", "content": "What is the weather like in Paris today?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees."},
    ],
)
assert follow.choices[0].message.content or follow.choices[0].message.tool_calls, follow
print("tools ok:", call.function.arguments)
