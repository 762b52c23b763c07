"""The settings file (``vllm-autoscale.toml``, deploy/settings/config_file.py): found where it
should be, read as the settings, under the environment; a key it does not know, or a secret,
is one line naming the key and the file; each value says where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.settings.config_file import ConfigFileError, find_config, load_settings
from deploy.settings.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [*Settings.env_names(), "AUTOSCALE_SETTINGS_JSON"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_file_means_the_defaults() -> None:
    loaded = load_settings()
    assert loaded.path is None and loaded.settings == Settings()
    assert set(loaded.sources.values()) == {"default"}


def test_the_current_directorys_file_sets_the_settings(tmp_path: Path) -> None:
    write(tmp_path / "vllm-autoscale.toml", 'scaledown_window = 300\nmodel = "Qwen/Qwen3-8B"\n')
    loaded = load_settings()
    assert loaded.path == (tmp_path / "vllm-autoscale.toml").resolve()
    assert loaded.settings.scaledown_window == 300 and loaded.settings.model == "Qwen/Qwen3-8B"
    assert loaded.sources["scaledown_window"] == "file" and loaded.sources["gpu"] == "default"


def test_the_environment_overrides_the_file(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "vllm-autoscale.toml", "scaledown_window = 300\nmax_containers = 3\n")
    monkeypatch.setenv("VLLM_SCALEDOWN_WINDOW", "900")
    loaded = load_settings()
    assert loaded.settings.scaledown_window == 900 and loaded.sources["scaledown_window"] == "env"
    assert loaded.settings.max_containers == 3 and loaded.sources["max_containers"] == "file"
    described = {name: (value, source) for name, value, source in loaded.described()}
    assert described["VLLM_SCALEDOWN_WINDOW"] == ("900", "env")
    assert described["VLLM_MAX_CONTAINERS"] == ("3", "file")
    assert described["VLLM_MODE"] == ('"autoscale"', "default")


def test_config_flag_then_vllm_config_then_the_current_directory(tmp_path, monkeypatch) -> None:
    write(tmp_path / "vllm-autoscale.toml", "max_containers = 2\n")
    other = write(tmp_path / "prod.toml", "max_containers = 5\n")
    named = write(tmp_path / "named.toml", "max_containers = 7\n")
    assert load_settings().settings.max_containers == 2
    monkeypatch.setenv("VLLM_CONFIG", str(other))
    assert load_settings().settings.max_containers == 5
    assert load_settings(named).settings.max_containers == 7
    with pytest.raises(ConfigFileError, match=r"settings file .*missing\.toml does not exist"):
        find_config(tmp_path / "missing.toml")


def test_an_unknown_key_is_one_line_naming_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "vllm-autoscale.toml", "scaledown_window = 300\nscale_window = 9\n")
    with pytest.raises(ConfigFileError) as caught:
        load_settings()
    message = str(caught.value)
    assert message == f"settings file {path.resolve()}: unknown setting 'scale_window'"


def test_a_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "vllm-autoscale.toml", 'wrapper_api_key = "sk-oops"\n')
    with pytest.raises(ConfigFileError, match=r"'wrapper_api_key' is a secret.*vllm-secrets"):
        load_settings()


def test_tables_and_paths(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    write(
        tmp_path / "conf" / "vllm-autoscale.toml",
        'api_keys_file = "keys.toml"\n'
        "[[models]]\n"
        'name = "Qwen/Qwen3-8B"\n'
        "scaledown_window = 300\n"
        "[models.adapters]\n"
        'sql = "acme/qwen3-sql-lora"\n',
    )
    loaded = load_settings(tmp_path / "conf" / "vllm-autoscale.toml")
    settings = loaded.settings
    # A relative path is the file's folder's, whatever the current directory.
    assert settings.api_keys_file == (tmp_path / "conf" / "keys.toml").resolve()
    assert json.loads(settings.models or "")[0]["adapters"] == {"sql": "acme/qwen3-sql-lora"}
    assert [m.name for m in settings.served_models()] == ["Qwen/Qwen3-8B"]
    write(tmp_path / "vllm-autoscale.toml", '[adapters]\nsql = "/models/sql"\n')
    assert load_settings().settings.adapters == {"sql": "/models/sql"}


def test_a_bad_value_is_a_settings_error(tmp_path: Path) -> None:
    write(tmp_path / "vllm-autoscale.toml", "scaledown_window = 1\n")
    with pytest.raises(ValueError, match="scaledown_window"):
        load_settings()
    write(tmp_path / "vllm-autoscale.toml", "scaledown_window = \n")
    with pytest.raises(ConfigFileError, match="is not TOML"):
        load_settings()
