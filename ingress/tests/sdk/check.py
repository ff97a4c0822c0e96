"""Drives a Cortex ingress with the official openai and anthropic SDKs.

Usage: check.py BASE_URL CHAT_MODEL EMBEDDING_MODEL REAL_CHAT_MODEL
Exits non-zero (with the failing check) when any SDK call or its parser fails.
CHAT_MODEL may be simulated; REAL_CHAT_MODEL (SmolLM2) answers the
structured-output checks, whose JSON must parse.
"""

import sys

import anthropic
import openai
from pydantic import BaseModel, Field

base, chat, embedding, real = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def check(name, condition, detail=""):
    if not condition:
        sys.exit(f"FAILED {name}: {detail}")
    print(f"ok {name}")


oa = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
user = [{"role": "user", "content": "Hello there"}]

r = oa.chat.completions.create(model=chat, messages=user, max_tokens=6)
check("openai chat", r.choices[0].message.content and r.usage.completion_tokens == 6, r)
check("openai chat finish", r.choices[0].finish_reason == "length", r.choices[0].finish_reason)

chunks = list(
    oa.chat.completions.create(
        model=chat, messages=user, max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check("openai stream text", len(text) > 0, chunks)
check("openai stream role first", chunks[0].choices[0].delta.role == "assistant", chunks[0])
check("openai stream usage", chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6, chunks[-1])

tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
ask = [{"role": "user", "content": "Weather in Paris?"}]
r = oa.chat.completions.create(model=chat, max_tokens=128, tools=tools, messages=ask)
call = r.choices[0].message.tool_calls[0] if r.choices[0].message.tool_calls else None
check("openai tool call", r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather", r)
check("openai tool call arguments", call.function.arguments == "{}", call)

streamed_calls = {}
for chunk in oa.chat.completions.create(model=chat, max_tokens=128, tools=tools, messages=ask, stream=True):
    for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        entry = streamed_calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
        entry["id"] = entry["id"] or delta.id
        entry["name"] += (delta.function.name or "") if delta.function else ""
        entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
check("openai streamed tool call", streamed_calls.get(0, {}).get("name") == "get_weather", streamed_calls)

r = oa.chat.completions.create(
    model=chat,
    max_tokens=4,
    tools=tools,
    tool_choice="none",
    messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments},
        }]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ],
)
check("openai tool round trip", r.choices[0].message.content and r.choices[0].finish_reason == "length", r)

r = oa.responses.create(model=chat, input="Hello there", max_output_tokens=6)
check("responses text", r.output_text and r.usage.output_tokens == 6, r)
check("responses incomplete at the limit", r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", r)

r = oa.responses.create(
    model=chat, instructions="Be brief.", max_output_tokens=6,
    input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}],
)
check("responses items and instructions", r.output_text and r.instructions == "Be brief.", r)

with oa.responses.stream(model=chat, input="Hello there", max_output_tokens=6) as stream:
    events = list(stream)
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
last = events[-1]
check("responses stream order", events[0].type == "response.created" and last.type == "response.incomplete", [e.type for e in events])
check("responses stream text", deltas and last.response.output[0].content[0].text == deltas, (deltas, last))
check("responses stream sequence", [e.sequence_number for e in events] == list(range(len(events))), events)

resp_tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
r = oa.responses.create(model=chat, input="Weather in Paris?", tools=resp_tools, max_output_tokens=128)
fc = [o for o in r.output if o.type == "function_call"]
check("responses function call", r.status == "completed" and fc and fc[0].name == "get_weather", r)

with oa.responses.stream(model=chat, input="Weather in Paris?", tools=resp_tools, max_output_tokens=128) as stream:
    final = stream.get_final_response()
streamed_fc = [o for o in final.output if o.type == "function_call"]
check("responses streamed function call", streamed_fc and streamed_fc[0].name == "get_weather" and streamed_fc[0].call_id, final)

r = oa.responses.create(
    model=chat, tools=resp_tools, tool_choice="none", max_output_tokens=4,
    input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": fc[0].call_id, "name": fc[0].name, "arguments": fc[0].arguments},
        {"type": "function_call_output", "call_id": fc[0].call_id, "output": "18 C and sunny"},
    ],
)
check("responses function round trip", r.output_text and r.status == "incomplete", r)

try:
    oa.responses.create(model=chat, input="Hello", previous_response_id=r.id)
    check("responses previous_response_id refused", False)
except openai.BadRequestError as err:
    check("responses previous_response_id refused", "not stored" in str(err), err)

r = oa.completions.create(model=chat, prompt="Once upon a time", max_tokens=4)
check("openai legacy completion", r.choices[0].text is not None and r.usage.completion_tokens == 4, r)

ids = [m.id for m in oa.models.list()]
check("openai models list", chat in ids and embedding in ids, ids)
check("openai model retrieve", oa.models.retrieve(chat).id == chat)

e = oa.embeddings.create(model=embedding, input=["Paris is in France.", "Bonjour"])
check("openai embeddings (SDK default base64)", len(e.data) == 2 and len(e.data[0].embedding) == 384, len(e.data))
e = oa.embeddings.create(model=embedding, input="Paris", encoding_format="float")
check("openai embeddings float", len(e.data[0].embedding) == 384)

try:
    oa.chat.completions.create(model=chat, messages=[], max_tokens=1)
    check("openai bad request raises", False)
except openai.BadRequestError as err:
    check("openai bad request raises", err.status_code == 400, err)
try:
    oa.models.retrieve("no-such-model")
    check("openai not found raises", False)
except openai.NotFoundError as err:
    check("openai not found raises", err.status_code == 404, err)

an = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
m = an.messages.create(model=chat, max_tokens=6, system="Be brief.", messages=user)
check("anthropic message", m.content[0].type == "text" and m.usage.output_tokens == 6, m)
check("anthropic stop reason", m.stop_reason == "max_tokens", m.stop_reason)

with an.messages.stream(model=chat, max_tokens=6, messages=user) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
check("anthropic stream text", len(streamed) > 0 and final.content[0].text == streamed, (streamed, final))
check("anthropic stream usage", final.usage.output_tokens == 6 and final.usage.input_tokens > 0, final.usage)

an_tools = [{"name": "get_weather", "description": "Weather now", "input_schema": WEATHER}]
m = an.messages.create(model=chat, max_tokens=128, tools=an_tools, messages=ask)
use = [b for b in m.content if b.type == "tool_use"]
check("anthropic tool use", m.stop_reason == "tool_use" and use and use[0].name == "get_weather", m)
check("anthropic tool use input", use[0].input == {}, use[0])

with an.messages.stream(model=chat, max_tokens=128, tools=an_tools, messages=ask) as stream:
    final = stream.get_final_message()
streamed_use = [b for b in final.content if b.type == "tool_use"]
check("anthropic streamed tool use", final.stop_reason == "tool_use" and streamed_use[0].name == "get_weather", final)

m = an.messages.create(
    model=chat,
    max_tokens=4,
    tools=an_tools,
    tool_choice={"type": "none"},
    messages=ask + [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": use[0].id, "name": use[0].name, "input": use[0].input},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use[0].id, "content": "18 C and sunny"},
        ]},
    ],
)
check("anthropic tool round trip", m.content[0].type == "text" and m.stop_reason == "max_tokens", m)

c = an.messages.count_tokens(model=chat, messages=user, system="Be brief.")
check("anthropic count_tokens", c.input_tokens > 0, c)

try:
    an.messages.create(model=chat, max_tokens=0, messages=user)
    check("anthropic bad request raises", False)
except anthropic.BadRequestError as err:
    check("anthropic bad request raises", err.status_code == 400, err)

class City(BaseModel):
    city: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int = Field(ge=0, le=100_000_000)
    is_capital: bool


describe = [{"role": "user", "content": "Describe Paris."}]
parsed = []
for attempt in range(20):
    r = oa.chat.completions.parse(
        model=real, messages=describe, response_format=City, temperature=1.0,
        seed=attempt, max_tokens=200,
    )
    message = r.choices[0].message
    if message.parsed is None or r.choices[0].finish_reason != "stop":
        check(f"strict schema at temperature 1 (try {attempt + 1})", False, r)
    parsed.append(message.parsed)
check("strict schema obeyed 20 of 20 at temperature 1", len(parsed) == 20, parsed[:3])
print("  e.g.", parsed[0].model_dump_json())

r = oa.responses.parse(model=real, input="Describe Paris.", text_format=City, max_output_tokens=200, temperature=0)
check("responses parse", isinstance(r.output_parsed, City), r)

forced = oa.chat.completions.create(
    model=real, max_tokens=200, temperature=0, messages=[{"role": "user", "content": "Hello! How are you today?"}],
    tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}},
)
call = forced.choices[0].message.tool_calls[0].function
check("forced tool call ends as a call", forced.choices[0].finish_reason in ("tool_calls", "stop"), forced)
check("forced tool call fits", call.name == "get_weather" and "city" in __import__("json").loads(call.arguments), forced)

print("all SDK checks passed")
