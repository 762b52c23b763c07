"""What is deployed: ``GET /status`` shows an admin the deploy's record baked into the image
(``AUTOSCALE_DEPLOYMENT_JSON``), and a key that is not an admin's never sees it; ``GET /``
keeps the seed's fields and adds the server's version."""

from __future__ import annotations

import json

import httpx
from pydantic import SecretStr

from deploy.core.version import __version__
from deploy.settings.constants import DEPLOYMENT_ENV
from deploy.settings.deployment import deployment_env, deployment_record, settings_hash
from deploy.settings.settings import Settings
from tests.unit_tests.wrapper_fake import KEY, fresh_app

USER = "user-" + "u" * 40


async def _get(app, path: str, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=5) as client:
        return await client.get(path, headers={"Authorization": f"Bearer {token}"})


async def test_status_shows_an_admin_what_was_deployed(monkeypatch) -> None:
    record = deployment_record(Settings(), commit="a" * 40, dirty=True)
    monkeypatch.setenv(DEPLOYMENT_ENV, deployment_env(record)[DEPLOYMENT_ENV])
    app, _ = fresh_app(api_keys=SecretStr(json.dumps([{"name": "user", "key": USER}])))
    admin = (await _get(app, "/status", KEY)).json()
    user = (await _get(app, "/status", USER)).json()
    assert admin["deployment"] == record
    assert admin["deployment"]["package_version"] == __version__
    assert admin["deployment"]["git_commit"] == "a" * 40 and admin["deployment"]["git_dirty"]
    assert "deployment" not in user
    root = (await _get(app, "/", USER)).json()
    assert root["version"] == "2.0.0" and root["package_version"] == __version__


def test_the_settings_hash_changes_with_a_setting_and_not_with_a_secret() -> None:
    plain = settings_hash(Settings())
    assert plain == settings_hash(Settings(wrapper_api_key="sk-secret-1"))
    assert plain != settings_hash(Settings(scaledown_window=300))
    assert len(plain) == 64
