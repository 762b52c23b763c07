"""A cold start you can see: a `create_agent` app streamed with
`stream_mode=["messages", "custom"]` shows a live line ("GPU waking, 35 s of about 60 s")
while the GPU starts, then the answer as it is written.

    pip install 'langchain>=1.0' rich
    vllm-autoscale serve --local -- python examples/cold_start_progress.py

While the engine boots, the wrapper sends progress on the stream (SSE comments that other
OpenAI clients skip); `ChatVLLMAutoscale` turns each into a LangChain custom event, which a
LangGraph run (an agent included) hands out in its "custom" stream. Retries (a rate limit,
a 503) come the same way, as `vllm_autoscale.retry`.
"""

from __future__ import annotations

from langchain.agents import create_agent
from rich.console import Console

from langchain_vllm_autoscale import ChatVLLMAutoscale

console = Console(stderr=True)
llm = ChatVLLMAutoscale(temperature=0, max_tokens=48, warmup=False)  # let it start cold
agent = create_agent(llm, tools=[], system_prompt="You answer in one short sentence.")

question = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
answer, waits = "", 0
with console.status("asking...") as line:
    for mode, data in agent.stream(question, stream_mode=["messages", "custom"]):
        if mode == "custom" and data.get("type") == "vllm_autoscale.progress":
            waits += 1
            line.update(data["message"])  # "…: GPU waking (starting), 12 s of about 40 s"
        elif mode == "custom" and data.get("type") == "vllm_autoscale.retry":
            line.update(data["message"])
        elif mode == "messages":
            chunk, _ = data
            answer += chunk.content if isinstance(chunk.content, str) else ""
print(f"progress events while waiting: {waits}")
print(f"answer: {answer.strip()}")
