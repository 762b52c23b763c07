"""A LangGraph agent on ChatVLLMAutoscale: the model calls a real Python tool, the result goes
back, and the model answers."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from langchain_vllm_autoscale import ChatVLLMAutoscale


def test_langgraph_tool_agent(warm_stack, api_key) -> None:
    calls: list[dict] = []

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        calls.append({"a": a, "b": b})
        return a * b

    llm = ChatVLLMAutoscale(base_url=warm_stack.url, api_key=api_key, temperature=0, max_tokens=64)
    # A 135M model does not choose tools on its own: the first turn forces a call; once a
    # tool result is in, the model answers in text.
    must_call = llm.bind_tools([multiply], tool_choice="required")
    may_call = llm.bind_tools([multiply], tool_choice="none")

    def agent(state: MessagesState) -> dict:
        last = state["messages"][-1]
        model = may_call if isinstance(last, ToolMessage) else must_call
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([multiply]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    app = graph.compile()

    result = app.invoke({"messages": [HumanMessage("What is 6 times 7? Use the tool.")]})
    messages = result["messages"]
    assert len(calls) == 1 and all(isinstance(v, int) for v in calls[0].values())
    tool_messages = [m for m in messages if isinstance(m, ToolMessage)]
    assert tool_messages[0].content == str(calls[0]["a"] * calls[0]["b"])
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.text.strip()
    assert sum(m.usage_metadata["output_tokens"] for m in messages if isinstance(m, AIMessage)) > 0
