"""Drives `mlx-infer serve` with the official `openai` and `anthropic`
clients; run by cli/tests/serve.rs.

argv: PORT API_KEY CASES.json, where the file holds
{"prompt", "message", "max_tokens", "raw", "chat"}: the greedy answers
`mlx-infer generate` and `chat` gave. Exits non-zero on any mismatch.
"""
import json
import sys

import anthropic
import openai

port, key, cases_path = sys.argv[1], sys.argv[2], sys.argv[3]
with open(cases_path) as f:
    case = json.load(f)
n = case["max_tokens"]

client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)

models = client.models.list()
ids = [m.id for m in models.data]
assert ids, ids
model = ids[0]

# chat, not streamed
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": case["message"]}],
    max_tokens=n, temperature=0)
assert r.choices[0].message.content == case["chat"], (r.choices[0].message.content, case["chat"])
assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage

# chat, streamed, with usage
text, usage, finish = "", None, None
for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": case["message"]}],
        max_completion_tokens=n, temperature=0, stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            text += c.delta.content
        if c.finish_reason:
            finish = c.finish_reason
assert text == case["chat"], (text, case["chat"])
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
assert finish == r.choices[0].finish_reason, finish

# completions, not streamed and streamed
r = client.completions.create(model=model, prompt=case["prompt"], max_tokens=n, temperature=0)
assert r.choices[0].text == case["raw"], (r.choices[0].text, case["raw"])
text = "".join(c.choices[0].text for c in client.completions.create(
    model=model, prompt=case["prompt"], max_tokens=n, temperature=0, stream=True) if c.choices)
assert text == case["raw"], (text, case["raw"])

# errors come back as the client's exceptions
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    raise AssertionError("no error for an unknown model")
except openai.NotFoundError:
    pass
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2, n=2)
    raise AssertionError("no error for n=2")
except openai.BadRequestError as e:
    assert "n must be 1" in str(e), e

# anthropic, not streamed and streamed
ac = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=key, max_retries=0, timeout=120)
# (this client version has no temperature argument: it goes in the body)
m = ac.messages.create(model=model, max_tokens=n, extra_body={"temperature": 0},
                       messages=[{"role": "user", "content": case["message"]}])
assert m.content[0].text == case["chat"], (m.content[0].text, case["chat"])
assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
assert m.usage.output_tokens > 0, m.usage
with ac.messages.stream(model=model, max_tokens=n, extra_body={"temperature": 0},
                        messages=[{"role": "user", "content": [{"type": "text", "text": case["message"]}]}]) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
assert text == case["chat"], (text, case["chat"])
assert final.stop_reason == m.stop_reason, final.stop_reason
try:
    ac.messages.create(model=model, max_tokens=10 ** 9, messages=[{"role": "user", "content": "x"}])
    raise AssertionError("no error for max_tokens over the context")
except anthropic.BadRequestError:
    pass
print("ok")
