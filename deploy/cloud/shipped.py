"""Files the settings name on the deploying machine, as the Modal containers get them.

A setting that names a local file would bake a path of the deployer's machine into an image
where no such file is. The keys file (``VLLM_API_KEYS_FILE``) is shipped into the wrapper's
image under ``SHIPPED_DIR`` and the baked setting names it there; adapters in a local folder
(too big for an image, and the GPU's to read) are refused with what to do instead: upload them
to the ``vllm-models`` Volume. Chat templates are only ever the ones shipped in
``deploy/chat_templates/`` (the settings refuse any other name).
"""

from __future__ import annotations

from pathlib import Path

from ..settings.settings import Settings

__all__ = ["MODELS_DIR", "SHIPPED_DIR", "NotShippable", "for_containers"]

SHIPPED_DIR = "/root/shipped"
"""Where the files the settings name are mounted in a container (beside ``/root/deploy``)."""
MODELS_DIR = "/models"
"""Where the ``vllm-models`` Volume is mounted in a GPU container."""


class NotShippable(ValueError):
    """A file a setting names cannot reach the containers: one line naming both."""


def _local_adapter(source: str) -> bool:
    """Whether an adapter source is a folder of this machine (not the models Volume's, not a
    Hugging Face repo)."""
    if source.startswith(MODELS_DIR + "/"):
        return False
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def _check_adapters(settings: Settings) -> None:
    for model in settings.served_models():
        for name, source in model.adapters.items():
            if _local_adapter(source):
                setting = "VLLM_MODELS" if settings.models else "VLLM_ADAPTERS"
                raise NotShippable(
                    f"{setting}: adapter {name!r} is the local folder {source}, which the GPU "
                    f"containers cannot read; upload it (modal volume put vllm-models {source} "
                    f"/{name}) and name it {MODELS_DIR}/{name}"
                )


def for_containers(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """The settings as the containers must see them, and the files to ship into the wrapper's
    image (container path -> local path). ``NotShippable`` when a file cannot be shipped.

    Idempotent: in a container, the settings already name the shipped paths."""
    _check_adapters(settings)
    files: dict[str, str] = {}
    keys_file = settings.api_keys_file
    if keys_file is None or keys_file.as_posix().startswith(SHIPPED_DIR + "/"):
        return settings, files
    local = keys_file.expanduser().resolve()
    if not local.is_file():
        raise NotShippable(
            f"VLLM_API_KEYS_FILE={keys_file}: no such file on this machine (the deploy ships "
            "it into the wrapper's image)"
        )
    remote = f"{SHIPPED_DIR}/api_keys/{local.name}"
    files[remote] = str(local)
    return settings.model_copy(update={"api_keys_file": Path(remote)}), files
