"""Tool calling by hand: bind_tools -> the model asks for a tool -> run it -> ToolMessage ->
the model answers with the result.

    vllm-autoscale serve --local -- python examples/tool_calling.py
"""

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool

from langchain_vllm_autoscale import ChatVLLMAutoscale


@tool
def get_exchange_rate(currency: str) -> str:
    """Get today's exchange rate of a currency against the US dollar."""
    rates = {"EUR": 0.92, "GBP": 0.79, "JPY": 151.2}
    return f"1 USD = {rates.get(currency.upper(), 1.0)} {currency.upper()}"


llm = ChatVLLMAutoscale(temperature=0, max_tokens=96)
# The local 135M model needs the call forced; Llama-3.1 on Modal can use tool_choice="auto".
llm_with_tools = llm.bind_tools([get_exchange_rate], tool_choice="required")

if __name__ == "__main__":
    messages = [
        SystemMessage("Answer in one sentence using the tool's result."),
        HumanMessage("How many euros is one dollar today?"),
    ]
    ai = llm_with_tools.invoke(messages)
    messages.append(ai)
    for call in ai.tool_calls:
        print(f"model calls {call['name']}({call['args']})")
        result = get_exchange_rate.invoke(call)  # a ToolMessage carrying the call's id
        print(f"tool returns: {result.content}")
        messages.append(result)
    final = llm.invoke(messages)
    print("answer:", final.text.strip())
