"""``deploy``: say what is deployed (settings, the engine's parsers), check the Modal Secret
both containers mount, then ``modal deploy`` the app file with the settings (the settings
file under the environment) and the deploy's record (version, commit, settings hash, time)
handed to it as baked JSON; ``--dry-run`` lists each setting's source and each container's
image and files instead."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ...cloud.manifest import collect
from ...cloud.shipped import NotShippable, for_containers
from ...settings.config_file import LoadedSettings, load_settings
from ...settings.deployment import deployment_env, deployment_record
from ...settings.settings import Settings
from .errors import CliError, need_extra

__all__ = ["OWN_TEMPLATE", "SECRET_NAME", "deploy"]

SECRET_NAME = "vllm-secrets"
OWN_TEMPLATE = "the model's own"
# deploy/modal_app.py: this file is deploy/ops/cli/deploy.py.
APP_FILE = Path(__file__).resolve().parents[2] / "modal_app.py"


def _secret_hint(settings: Settings) -> str:
    token = " HF_TOKEN=hf_..." if settings.model.startswith("meta-llama/") else ""
    return (
        "create it (the key is what your clients send as VLLM_AUTOSCALE_API_KEY):\n"
        "  export VLLM_AUTOSCALE_API_KEY=$(python3 -c 'import secrets; "
        "print(secrets.token_urlsafe(32))')\n"
        f"  modal secret create {SECRET_NAME} VLLM_WRAPPER_API_KEY=$VLLM_AUTOSCALE_API_KEY{token}"
    )


def _check_secret(settings: Settings) -> None:
    """The Secret both containers mount must exist before the deploy, or nothing serves."""
    import modal  # noqa: PLC0415 - modal is the 'modal' extra, checked by need_extra first
    from modal.exception import AuthError, NotFoundError  # noqa: PLC0415 - the 'modal' extra

    try:
        modal.Secret.from_name(SECRET_NAME).hydrate()
    except AuthError as exc:
        raise CliError("not logged in to Modal", "run `modal token new` once") from exc
    except NotFoundError as exc:
        raise CliError(
            f"the Modal Secret {SECRET_NAME!r} does not exist", _secret_hint(settings)
        ) from exc


def _git_state(repo: Path) -> tuple[str | None, bool | None]:
    """The checkout's commit and whether it has uncommitted changes (None, None: no git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        changes = subprocess.run(["git", "status", "--porcelain"], cwd=repo,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head, bool(changes.strip())


def _deploy_env(loaded: LoadedSettings) -> dict[str, str]:
    """The environment ``modal deploy`` (and the dry run's manifests) run under: the
    settings as ``modal_app.py`` must bake them, and the deploy's record."""
    settings = loaded.settings
    try:
        in_image, _ = for_containers(settings)
    except NotShippable as exc:
        raise CliError(str(exc)) from None
    commit, dirty = _git_state(APP_FILE.parent.parent)
    record = deployment_record(
        in_image, commit=commit, dirty=dirty,
        config_file=str(loaded.path) if loaded.path else None,
    )  # fmt: skip
    return {**os.environ, **settings.baked_env(), **deployment_env(record)}


def _print_sources(loaded: LoadedSettings) -> None:
    print(f"\nsettings (file: {loaded.path or 'none'}; env overrides file overrides default)")
    for name, value, source in loaded.described():
        print(f"  {name:<36} {value:<40} {source}")


def _print_manifests(env: dict[str, str]) -> None:
    try:
        manifests = collect(env)
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    for name, m in manifests.items():
        print(f"\ncontainer {name} (imports {m['module']}; GPU {m['gpu'] or 'none'})")
        print(f"  image   {m['base'].removeprefix('FROM ')} + {', '.join(m['packages'])}")
        print(f"  env     {', '.join(sorted(m['env']))}  (secrets: {', '.join(m['secrets'])})")
        print(f"  files   {len(m['files'])}")
        for remote in m["files"]:
            print(f"    {remote}")


def _describe(settings: Settings) -> None:
    """What is about to be deployed: the scaling settings, then the engine's parsers."""
    print(
        f"deploying app vllm-autoscale: model {settings.model} on {settings.gpu_spec} "
        f"(tensor parallel {settings.tp_size}), mode {settings.mode}, scaledown window "
        f"{settings.scaledown_window} s, max {settings.max_containers} GPU container(s) "
        f"(a new one past {settings.concurrency_target} requests each), "
        f"{settings.max_num_seqs} concurrent sequences, GPU snapshot "
        f"{'on' if settings.gpu_snapshot else 'off'}"
    )
    template = settings.chat_template_path
    print(
        f"engine: tool parser {settings.tool_parser or 'none (tool calling off)'}, chat "
        f"template {Path(template).name if template else OWN_TEMPLATE}, reasoning "
        f"parser {settings.reasoning or 'none'}"
    )
    if warning := settings.parser_warning():
        print(f"warning: {warning}", file=sys.stderr)


def deploy(args: argparse.Namespace) -> int:
    try:
        loaded = load_settings(args.config)
    except ValueError as exc:
        raise CliError(
            f"bad settings: {exc}", "see docs/deploy-modal.md for VLLM_* settings"
        ) from exc
    settings = loaded.settings
    # modal from this environment, whatever is on PATH; file mode, as the guide runs it.
    command = [sys.executable, "-m", "modal", "deploy", str(APP_FILE)]
    _describe(settings)
    need_extra("modal", "modal", "`vllm-autoscale deploy`")
    if APP_FILE.parent.name != "deploy":
        # modal_app.py imports `deploy`, and modal ships the checkout's files: an installed
        # copy of the server is not a checkout.
        raise CliError(
            "`vllm-autoscale deploy` ships the files of a clone of the repository; run it "
            "from one (git clone, then pip install -e . -e './deploy[modal]')"
        )
    env = _deploy_env(loaded)
    if args.dry_run:
        _print_sources(loaded)
        _print_manifests(env)
        print("\n$ modal deploy " + str(APP_FILE))
        return 0
    _check_secret(settings)
    print("$ modal deploy " + str(APP_FILE))
    return subprocess.call(command, cwd=APP_FILE.parent.parent, env=env)
