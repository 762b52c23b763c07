"""Every model preset names parsers that the vLLM release the images run has (read from
vLLM's own registries: a typo would otherwise surface as a GPU container that cannot start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.settings.settings import MODEL_PRESETS


@pytest.fixture(scope="module")
def vllm_parser_names() -> dict[str, list[str]]:
    """vLLM's registered parser names, read from its registries in a child process (vLLM's
    imports warn about torch internals, which this suite turns into errors)."""
    code = (
        "import json\n"
        "from vllm.reasoning import ReasoningParserManager\n"
        "from vllm.tool_parsers import ToolParserManager\n"
        "print(json.dumps({'tool': ToolParserManager.list_registered(),"
        " 'reasoning': ReasoningParserManager.list_registered()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True, text=True, check=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", sorted(MODEL_PRESETS))
def test_every_preset_names_parsers_vllm_has(
    model: str, vllm_parser_names: dict[str, list[str]]
) -> None:
    preset = MODEL_PRESETS[model]
    if preset.tool_call_parser is not None:
        assert preset.tool_call_parser in vllm_parser_names["tool"]
    if preset.reasoning_parser is not None:
        assert preset.reasoning_parser in vllm_parser_names["reasoning"]
    if preset.chat_template is not None:
        assert Path(preset.chat_template).is_file()
