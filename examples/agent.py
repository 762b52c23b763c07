"""A LangGraph tool-calling agent on ChatVLLMAutoscale: the model calls real Python tools,
reads their results and answers.

    vllm-autoscale serve --local -- python examples/agent.py

The local model (SmolLM2-135M) is tiny and does not pick tools by itself, so the first turn
forces a tool call (tool_choice="required"); with Llama-3.1-8B on Modal, tool_choice="auto" is
the natural choice (set AGENT_TOOL_CHOICE=auto).
"""

import os

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from langchain_vllm_autoscale import ChatVLLMAutoscale


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    forecasts = {"paris": "sunny, 24 C", "london": "light rain, 16 C", "tokyo": "cloudy, 21 C"}
    return forecasts.get(city.strip().lower(), "clear skies, 20 C")


@tool
def convert_celsius(celsius: float) -> str:
    """Convert a temperature in Celsius to Fahrenheit."""
    return f"{celsius * 9 / 5 + 32:.1f} F"


TOOLS = [get_weather, convert_celsius]
FIRST_CHOICE = os.environ.get("AGENT_TOOL_CHOICE", "required")

llm = ChatVLLMAutoscale(temperature=0, max_tokens=128)
first_turn = llm.bind_tools(TOOLS, tool_choice=FIRST_CHOICE)
later_turns = llm.bind_tools(TOOLS, tool_choice="none" if FIRST_CHOICE == "required" else "auto")


def agent(state: MessagesState) -> dict:
    has_results = any(isinstance(m, ToolMessage) for m in state["messages"])
    model = later_turns if has_results else first_turn
    return {"messages": [model.invoke(state["messages"])]}


def build_graph():
    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(TOOLS))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    return graph.compile()


if __name__ == "__main__":
    question = "What is the weather in Paris right now?"
    print(f"user: {question}")
    system = SystemMessage("Use the tools' results to answer in one plain sentence.")
    result = build_graph().invoke({"messages": [system, HumanMessage(question)]})
    for message in result["messages"][2:]:
        if message.type == "ai" and message.tool_calls:
            for call in message.tool_calls:
                print(f"agent calls {call['name']}({call['args']})")
        elif message.type == "tool":
            print(f"tool {message.name} -> {message.content}")
        else:
            print(f"agent: {message.text}")
