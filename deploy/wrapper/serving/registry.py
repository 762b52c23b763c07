"""The models this wrapper serves, and which one a request's ``model`` names.

Each served model has its own transport (its own engine locally, its own GPU class on Modal,
each scaling to zero on its own), settings (window, price, limits) and profile. LoRA adapters
belong to a base model: ``model=<adapter>`` goes to its base's engine, which vLLM serves the
adapter on under that name. A request that names no model gets the first (the default); an
unknown name gets 404 listing every name served.

Each served model also answers to a slash-free alias (``slash_free_alias``: the part after the
last ``/``, lower-cased, made unique): clients such as the OpenAI Agents SDK read a slash as a
provider prefix. An alias routes like the served name, and the engine, the ledger and the
cache see the served name only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

from ...core.contract import AdapterHost, Describes, EngineTransport
from ...core.model_info import ModelInfo
from ...settings.settings import MODEL_PRESETS, Settings
from ..handlers import InvalidRequest
from ..tokenize.counter import TokenCounter

__all__ = ["ModelRegistry", "ServedModel", "describe_served_model", "slash_free_alias"]


@dataclass
class ServedModel:
    name: str
    transport: EngineTransport
    settings: Settings
    info: ModelInfo
    counter: TokenCounter = field(repr=False)
    """Counts tokens with this model's tokenizer (loaded on first use)."""


class ModelRegistry:
    def __init__(
        self,
        transports: EngineTransport | Mapping[str, EngineTransport],
        settings: Settings,
        info: ModelInfo | None = None,
    ) -> None:
        if not isinstance(transports, Mapping):
            transports = {transports.model_name: transports}
        per_model = {m.name: m for m in settings.served_models()}
        self.models: dict[str, ServedModel] = {}
        for i, (name, transport) in enumerate(transports.items()):
            own = per_model.get(name) or settings
            described = info if (info is not None and i == 0) else None
            model_info = described or describe_served_model(transport, own)
            model_info = replace(model_info, name=name)
            self.models[name] = ServedModel(name, transport, own, model_info,
                                            TokenCounter(model_info))  # fmt: skip
        self.default = next(iter(self.models.values()))
        self.aliases: dict[str, str] = {}
        """Slash-free alias -> served name."""
        for name in self.models:
            alias = slash_free_alias(name, {*self.models, *self.aliases})
            if alias is not None:
                self.aliases[alias] = name
        self.adapters: dict[str, tuple[str, str]] = {}
        """Adapter name -> (base model, source)."""
        for served in self.models.values():
            declared = dict(served.settings.adapters)
            if isinstance(served.transport, AdapterHost):  # what the engine will serve
                declared |= served.transport.adapters()
            for adapter, source in declared.items():
                self.adapters[adapter] = (served.name, source)
        for adapter in self.adapters:  # a declared adapter's name wins over an alias
            self.aliases.pop(adapter, None)

    def __len__(self) -> int:
        return len(self.models)

    def names(self) -> list[str]:
        return [*self.models, *self.aliases, *self.adapters]

    def resolve(self, name: str | None, param: str = "model") -> tuple[ServedModel, str]:
        """The served model a request goes to, and the name the engine knows it by."""
        if not name:
            return self.default, self.default.name
        served = self.models.get(name)
        if served is not None:
            return served, name
        aliased = self.aliases.get(name)
        if aliased is not None:
            return self.models[aliased], aliased
        adapter = self.adapters.get(name)
        if adapter is not None:
            return self.models[adapter[0]], name
        raise InvalidRequest(
            f"model {name!r} is not served here; this service serves "
            + ", ".join(repr(n) for n in self.names()),
            param,
            HTTPStatus.NOT_FOUND,
        )

    def add_adapter(self, name: str, base: str, source: str) -> None:
        self.adapters[name] = (base, source)

    def remove_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)

    def cards(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: every model with its engine's state (as last seen: listing
        never wakes one), then every adapter with its base."""
        aliases: dict[str, list[str]] = {}
        for alias, name in self.aliases.items():
            aliases.setdefault(name, []).append(alias)
        cards = [
            {**m.info.model_card(), "aliases": aliases.get(m.name, []),
             "state": m.transport.state_hint()}
            for m in self.models.values()
        ]  # fmt: skip
        for adapter, (base, source) in self.adapters.items():
            base_card = self.models[base].info.model_card()
            cards.append({**base_card, "id": adapter, "root": source, "parent": base,
                          "state": self.models[base].transport.state_hint()})  # fmt: skip
        return cards


def slash_free_alias(name: str, taken: set[str]) -> str | None:
    """``name``'s alias: the part after its last ``/``, lower-cased, with ``-2``, ``-3``...
    when that is ``taken``; None when ``name`` is already its own alias."""
    base = name.rsplit("/", 1)[-1].lower() or "model"
    if base == name:
        return None
    alias, n = base, 1
    while alias in taken:
        n += 1
        alias = f"{base}-{n}"
    return alias


def describe_served_model(transport: EngineTransport, settings: Settings) -> ModelInfo:
    """The model ``transport`` serves, read from configuration only.

    A transport that supervises its engine itself (``LocalTransport``) ``Describes`` it: its
    ``engine_config()`` is the truth locally (SmolLM2 on CPU, whatever ``VLLM_MODEL`` says).
    A remote one (``ModalTransport``) does not: the GPU class runs
    ``gpu_engine_config(settings)``, so the settings are the truth there.
    """
    if isinstance(transport, Describes):
        config = transport.engine_config()
        preset = MODEL_PRESETS.get(config.served_model_name)
        info = ModelInfo.from_engine_config(config, preset.image_inputs if preset else False)
    else:
        info = settings.model_info()
    name = transport.model_name or info.name
    limit = min(settings.max_tokens_limit, info.max_model_len)
    return replace(info, name=name, max_output_tokens=limit)
