"""The README's "Using it in LangChain" and "LangChain 1.x agents" code runs as written,
against the live stack, and its claim about ``init_chat_model`` and ChatOpenAI holds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from langchain.chat_models import init_chat_model

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = ("## Using it in LangChain\n", "## LangChain 1.x agents\n")


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


def test_sections_have_code() -> None:
    assert [len(_python_blocks(s)) for s in SECTIONS] == [2, 1]


def test_readme_langchain_code_runs(warm_stack, api_key) -> None:
    # The blocks build on each other (llm, get_weather, BaseModel), as a reader runs them.
    code = "\n".join(block for section in SECTIONS for block in _python_blocks(section))
    env = {**os.environ, "VLLM_AUTOSCALE_URL": warm_stack.url, "VLLM_AUTOSCALE_API_KEY": api_key}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The agent's answer, in the schema, is the last thing the code prints.
    assert re.search(
        r"WeatherReport\(city='.+', temperature_c=-?\d+, sky='\w+'\)$", proc.stdout.strip()
    )


def test_init_chat_model_via_the_openai_route(warm_stack, api_key) -> None:
    """The README's fallback for code that must use init_chat_model: ChatOpenAI on /v1."""
    llm = init_chat_model(
        "openai:HuggingFaceTB/SmolLM2-135M-Instruct",
        base_url=warm_stack.url + "/v1",
        api_key=api_key,
        max_tokens=8,
        temperature=0,
    )
    assert type(llm).__name__ == "ChatOpenAI"
    answer = llm.invoke("Say hi.")
    assert answer.text.strip() and answer.usage_metadata["output_tokens"] > 0
