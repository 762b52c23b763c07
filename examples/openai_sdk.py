"""The openai SDK against the wrapper: /v1 is OpenAI-compatible, so only base_url changes.

vllm-autoscale serve --local -- python examples/openai_sdk.py
"""

import os

from openai import OpenAI

base_url = os.environ.get("VLLM_AUTOSCALE_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1"
client = OpenAI(base_url=base_url, api_key=os.environ.get("VLLM_AUTOSCALE_API_KEY") or "none")

if __name__ == "__main__":
    model = client.models.list().data[0].id
    print("model:", model)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello in Spanish."}], max_tokens=20
    )
    print("reply:", reply.choices[0].message.content)
    print("usage:", reply.usage)
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=20,
        stream=True,
    )
    print("stream: ", end="")
    for chunk in stream:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
