"""Moving from the integrated deployment (GPU and HTTP in one always-on container) to the
autoscaled one changes only the URL: the seed's /chat API is the same on both.

    export VLLM_AUTOSCALE_URL=https://<you>--vllm-integrated-serve.modal.run   # before
    export VLLM_AUTOSCALE_URL=https://<you>--vllm-autoscale-wrapper.modal.run  # after
    python examples/migrate_from_integrated.py

This is the seed's own client code; only the URL it reads differs.
"""

import asyncio
import os

import httpx

URL = os.environ.get("VLLM_AUTOSCALE_URL", "http://127.0.0.1:8000")
KEY = os.environ.get("VLLM_AUTOSCALE_API_KEY")


async def chat(prompt: str) -> dict:
    headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
    # 180 s as in the seed: the first request may wait for a cold start.
    async with httpx.AsyncClient(timeout=180.0, follow_redirects=True) as client:
        resp = await client.post(
            f"{URL}/chat",
            json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 40},
            headers=headers,
        )
        resp.raise_for_status()
        return resp.json()


if __name__ == "__main__":
    info = httpx.get(f"{URL}/", timeout=30).json()
    print(f"service: {info['service']} {info['version']}, model {info['model']}")
    reply = asyncio.run(chat("What is the tallest mountain?"))
    print("content:", reply["content"])
    print("usage:", reply["usage"])
