"""Async: ainvoke, astream and abatch side by side in one event loop.

vllm-autoscale serve --local -- python examples/async_usage.py
"""

import asyncio

from langchain_vllm_autoscale import ChatVLLMAutoscale


async def main() -> None:
    llm = ChatVLLMAutoscale(temperature=0, max_tokens=40)
    answer = await llm.ainvoke("What is 2 + 2? Answer with the number.")
    print("ainvoke:", answer.text)

    print("astream: ", end="")
    async for chunk in llm.astream("Name three colours."):
        print(chunk.text, end="", flush=True)
    print()

    # abatch sends all prompts as one request; gather runs independent calls concurrently.
    batch, single = await asyncio.gather(
        llm.abatch(["Say one.", "Say two.", "Say three."]),
        llm.ainvoke("Say four."),
    )
    print("abatch:", [m.text for m in batch])
    print("concurrent ainvoke:", single.text)
    await llm.aclose()


if __name__ == "__main__":
    asyncio.run(main())
