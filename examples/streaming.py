"""Streaming: print tokens as they arrive, then the usage that comes with the last chunk.

vllm-autoscale serve --local -- python examples/streaming.py
"""

from langchain_vllm_autoscale import ChatVLLMAutoscale

llm = ChatVLLMAutoscale(temperature=0.7, max_tokens=80)

if __name__ == "__main__":
    final = None
    for chunk in llm.stream("Write a two-line poem about the sea."):
        print(chunk.text, end="", flush=True)
        final = chunk if final is None else final + chunk
    print()
    print("usage:", final.usage_metadata)
    print("finish reason:", final.response_metadata.get("finish_reason"))
