"""Small LoRA adapters for tests, made here from the shipped SmolLM2 (nothing downloaded).

An adapter made by ``make_adapter`` is randomly initialised (``init_lora_weights=False``: a
fresh LoRA's B matrix is zero and would change nothing), rank 8 on the attention's q and v
projections, well under 1 MB. The same seed gives the same weights; another seed another
adapter. It is what vLLM loads with ``--lora-modules`` or ``/v1/load_lora_adapter``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ADAPTER_RANK", "make_adapter"]

ADAPTER_RANK = 8


def make_adapter(base_model_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Write a random rank-8 LoRA adapter for the model in ``base_model_dir`` into
    ``out_dir`` (``adapter_model.safetensors`` + ``adapter_config.json``); returns
    ``out_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=ADAPTER_RANK,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    # The adapter's weights are drawn when peft wraps the model: seed them alone, and give
    # the global generator back as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    return out_dir
