"""A deploy from a settings file, as ``vllm-autoscale deploy`` hands it to ``modal deploy``:
the file's settings are what both images bake, the keys file it names is shipped into the
wrapper's image (and the baked setting names it there, not the deployer's path), and the
deploy's record is in both images beside the settings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.cloud.manifest import collect
from deploy.cloud.shipped import SHIPPED_DIR
from deploy.core.version import __version__
from deploy.gateway.keys import hash_key, load_file
from deploy.ops.cli import deploy as deploy_command
from deploy.settings.config_file import load_settings
from deploy.settings.constants import BAKED_SETTINGS_ENV, DEPLOYMENT_ENV
from deploy.settings.settings import Settings
from tests.container_fidelity.staging import DEPLOY_MACHINE_SECRETS, REPO, stage

KEY = "vak-from-the-keys-file-0123456789"
REMOTE_KEYS = f"{SHIPPED_DIR}/api_keys/team-keys.toml"


def _deploy_from_a_fresh_shell(config: Path, **env: str) -> dict[str, Any]:
    """What a deploy from ``config`` hands ``modal deploy``, from a shell with no ``VLLM_*``
    but the deploying machine's secrets (and ``env``)."""
    saved = dict(os.environ)
    try:
        for name in [k for k in os.environ if k.startswith("VLLM_")]:
            del os.environ[name]
        os.environ.pop(BAKED_SETTINGS_ENV, None)
        os.environ.update(DEPLOY_MACHINE_SECRETS)
        os.environ.update(env)
        return deploy_command._deploy_env(load_settings(config))
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def from_file(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("team-config")
    keys = folder / "team-keys.toml"
    keys.write_text(f'[[keys]]\nname = "team"\nsha256 = "{hash_key(KEY)}"\nrole = "admin"\n')
    config = folder / "vllm-autoscale.toml"
    config.write_text('scaledown_window = 420\napi_keys_file = "team-keys.toml"\n')
    env = _deploy_from_a_fresh_shell(config)
    return {"manifests": collect(env), "keys": keys, "env": env, "config": config}


def test_two_deploys_from_fresh_shells_bake_the_same_settings(from_file) -> None:
    """A redeploy from the settings file alone reverts nothing: the second deploy's images
    bake what the first one's did (read back from the Modal objects)."""
    again = collect(_deploy_from_a_fresh_shell(from_file["config"]))
    for name in ("wrapper", "VLLMInference"):
        first = json.loads(from_file["manifests"][name]["env"][BAKED_SETTINGS_ENV])
        assert json.loads(again[name]["env"][BAKED_SETTINGS_ENV]) == first
    assert again["VLLMInference"]["options"] == from_file["manifests"]["VLLMInference"]["options"]


def test_the_files_settings_are_baked_into_both_images(from_file) -> None:
    manifests = from_file["manifests"]
    for name in ("wrapper", "VLLMInference"):
        baked = Settings(**json.loads(manifests[name]["env"][BAKED_SETTINGS_ENV]))
        assert baked.scaledown_window == 420
        assert baked.api_keys_file == Path(REMOTE_KEYS)  # where it is, not the deployer's path
    assert manifests["VLLMInference"]["options"]["scaledown_window"] == 420


def test_the_keys_file_is_shipped_into_the_wrapper_image(from_file, tmp_path) -> None:
    wrapper, gpu = from_file["manifests"]["wrapper"], from_file["manifests"]["VLLMInference"]
    assert wrapper["files"][REMOTE_KEYS] == str(from_file["keys"].resolve())
    assert REMOTE_KEYS not in gpu["files"]  # the GPU never reads keys
    staged = stage(wrapper, tmp_path).parent / REMOTE_KEYS.lstrip("/")
    [record] = load_file(staged)
    assert record.name == "team" and record.is_admin


def test_the_deploys_record_is_in_both_images(from_file) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    for name in ("wrapper", "VLLMInference"):
        env = from_file["manifests"][name]["env"]
        record = json.loads(env[DEPLOYMENT_ENV])
        assert record == json.loads(from_file["env"][DEPLOYMENT_ENV])
        assert record["package_version"] == __version__ and record["git_commit"] == head
        for secret in DEPLOY_MACHINE_SECRETS.values():
            assert secret not in json.dumps(env)


def test_plain_modal_deploy_ships_nothing_extra(manifests) -> None:
    """Without a keys file nothing lands under the shipped folder, and ``modal deploy`` run
    by hand carries no record (the CLI makes it)."""
    for name in ("wrapper", "VLLMInference"):
        assert not [f for f in manifests[name]["files"] if f.startswith(SHIPPED_DIR)]
        assert DEPLOYMENT_ENV not in manifests[name]["env"]
