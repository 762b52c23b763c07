"""Quickstart: an ordinary LangChain chain (prompt | model | parser) on ChatVLLMAutoscale.

Reads the service URL and key from VLLM_AUTOSCALE_URL / VLLM_AUTOSCALE_API_KEY, so the same
file runs against `vllm-autoscale serve --local` and a Modal deployment.

    vllm-autoscale serve --local -- python examples/quickstart.py
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_vllm_autoscale import ChatVLLMAutoscale

llm = ChatVLLMAutoscale(temperature=0, max_tokens=64)

prompt = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a concise assistant. Answer in one sentence."),
        ("human", "{question}"),
    ]
)
chain = prompt | llm | StrOutputParser()

if __name__ == "__main__":
    print(chain.invoke({"question": "What is the capital of France?"}))
    # The raw message carries token usage and the service's cold-start facts.
    message = (prompt | llm).invoke({"question": "Name a primary colour."})
    print("usage:", message.usage_metadata)
    print("service:", message.response_metadata.get("service"))
