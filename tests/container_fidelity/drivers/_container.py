"""Shared by the drivers: import the staged app as a Modal container would, and report."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

STAGED_ROOT = Path(os.environ["STAGED_ROOT"])


def import_app(module_name: str) -> ModuleType:
    """Import the function's module from the staged /root, with nothing of the checkout on
    the path (its editable install would otherwise serve `deploy` from the repository)."""

    def reaches_checkout(entry: str) -> bool:
        path = Path(entry or ".").resolve()
        return (path / "deploy").is_dir() or (path / "langchain_vllm_autoscale").is_dir()

    sys.path[:] = [str(STAGED_ROOT)] + [p for p in sys.path if not reaches_checkout(p)]
    module = importlib.import_module(module_name)
    import deploy

    where = Path(deploy.__file__).resolve()
    assert where.is_relative_to(STAGED_ROOT.resolve()), f"deploy imported from {where}"
    return module


def raw_function(obj: Any) -> Any:
    """The user's function behind a Modal function, as the container calls it."""
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(obj)._raw_f


def raw_method(user_cls: type, name: str) -> Any:
    """A method of a Modal class as written (enter, exit and @method alike)."""
    return user_cls.__dict__[name]._get_raw_f()


def container_instance(module: ModuleType, class_name: str, parameters: dict[str, Any]) -> Any:
    """The instance a container of one pool of the class runs its methods on, as Modal's
    container entrypoint builds it: the class found by name in the module, bound to the
    pool's parameters before any enter method runs (modal._runtime.user_code_imports)."""
    from modal._runtime.user_code_imports import get_user_class_instance
    from modal._utils.async_utils import synchronizer

    cls = synchronizer._translate_in(getattr(module, class_name))  # modal's lookup: by name
    return get_user_class_instance(cls, (), parameters)


def report(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, default=str))
