"""Structured output into a pydantic model (vLLM's constrained decoding: json_schema), and the
same through a forced tool call (function_calling), with the raw message kept.

    vllm-autoscale serve --local -- python examples/structured_output.py
"""

from pydantic import BaseModel, Field

from langchain_vllm_autoscale import ChatVLLMAutoscale


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="The city's name")
    country: str = Field(description="The country it is in")


llm = ChatVLLMAutoscale(temperature=0, max_tokens=60)

if __name__ == "__main__":
    city = llm.with_structured_output(City).invoke("Tell me about Kyoto.")
    print("json_schema:", repr(city))

    out = llm.with_structured_output(City, method="function_calling", include_raw=True).invoke(
        "Tell me about Lisbon."
    )
    print("function_calling:", repr(out["parsed"]))
    print("tokens used:", out["raw"].usage_metadata["total_tokens"])
