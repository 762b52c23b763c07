"""``vllm-autoscale``: run the service locally, deploy it to Modal, and talk to a deployment."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ..core.logs import configure_logging

__all__ = ["main"]


def _need(module: str, extra: str, what: str) -> None:
    """Fail in one line, naming the extra, when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise CliError(
            f"{what} needs the '{extra}' extra: pip install './deploy[{extra}]' from a clone "
            f"(the vllm-autoscale-server[{extra}] distribution)"
        )


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                "another process uses that port: pick another with --port, or stop it",
            ) from None


def _serve(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "serve runs the local stack (--local); on Modal the wrapper is served by "
            "`vllm-autoscale deploy`.",
            file=sys.stderr,
        )
        return 2
    _need("vllm", "local", "`vllm-autoscale serve --local`")
    _check_port_free(args.host, args.port)
    from ..engine.local_model import LocalModelError, default_cache_dir
    from .local_stack import LocalStack

    # With a command to run, its output is the point: only warnings from the service, and
    # vLLM's own output in a file (a failed start still quotes its last lines).
    configure_logging(args.log_level or ("WARNING" if args.command else "INFO"))
    engine_log = args.engine_log
    if engine_log is None and args.command:
        engine_log = default_cache_dir() / "engine.log"
        engine_log.parent.mkdir(parents=True, exist_ok=True)
        print(f"vLLM's log: {engine_log}", flush=True)
    try:
        stack = LocalStack(
            host=args.host,
            port=args.port,
            scaledown_window=args.scaledown_window,
            warm=args.warm or bool(args.command),
            engine_log=engine_log,
            access_log=False,
        )
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    try:
        stack.start()
        print(
            f"vllm-autoscale wrapper on {stack.url} (model {stack.transport.model_name})",
            flush=True,
        )
        if args.command:
            print("waiting for the engine to be warm...", flush=True)
            stack.wait_warm()
            env = {**os.environ, "VLLM_AUTOSCALE_URL": stack.url}
            if stack.settings.wrapper_api_key:
                env.setdefault(
                    "VLLM_AUTOSCALE_API_KEY", stack.settings.wrapper_api_key.get_secret_value()
                )
            command = [sys.executable if c == "python" else c for c in args.command]
            child = subprocess.Popen(command, env=env)
            while child.poll() is None and not stop.is_set():
                stop.wait(0.2)
            if child.poll() is None:
                child.terminate()
            code = child.wait()
        else:
            window = stack.transport.scaledown_window
            print(
                "engine starts on the first request (or POST /warmup) and stops after "
                f"{window:g} idle seconds; Ctrl-C stops everything"
                if window
                else "engine stays up until Ctrl-C",
                flush=True,
            )
            if args.warm:
                stack.wait_warm()
                print("engine warm", flush=True)
            stop.wait()
    finally:
        stack.stop()
        print("stopped wrapper and engine", flush=True)
    return code


def _cost(args: argparse.Namespace) -> int:
    import json

    from .cost import PRESETS, curve, estimate, inputs_from_preset

    if args.traffic or args.profile:
        return _advise(args)
    advisor_only = (args.max_wait_share, args.max_mean_wait, args.warm_schedule)
    if any(a is not None for a in advisor_only):
        print("error: the wait budget and --warm-schedule need --traffic or --profile",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        inputs = inputs_from_preset(
            args.preset,
            hours_per_day=args.hours,
            requests_per_hour=args.requests_per_hour,
            gpu_price_per_hour=args.gpu_price,
            gpu_count=args.gpu_count,
            scaledown_window=args.scaledown_window,
            boot_seconds=args.boot_seconds,
            wrapper_price_per_hour=args.wrapper_price,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = estimate(inputs)
    if args.json:
        print(json.dumps({"preset": args.preset, **report.to_dict()}, indent=2))
    else:
        i = inputs
        even = report.break_even_hours_per_day
        print(f"preset {args.preset}: {PRESETS[args.preset]['description']}")
        print(
            f"  GPU ${i.gpu_price_per_hour:.2f}/h x {i.gpu_count}, {i.hours_per_day:g} h/day of use"
            + (f" at {i.requests_per_hour:g} requests/h" if i.requests_per_hour else "")
            + f", window {i.scaledown_window:g} s, boot {i.boot_seconds:g} s"
        )
        print(f"  always on                      ${report.always_on_monthly:10,.2f}/month")
        print(
            f"  autoscaled, seed's formula     ${report.seed_autoscaled_monthly:10,.2f}/month"
            f"   saving {report.seed_saving:.1%}"
        )
        print(
            f"  autoscaled, with boots + tails ${report.autoscaled_monthly:10,.2f}/month"
            f"   saving {report.saving:.1%}"
        )
        gpu_hours, wakes = report.gpu_hours_per_day, report.wakes_per_day
        print(f"  GPU billed {gpu_hours:.2f} h/day over {wakes:.1f} wakes")
        print(f"  {_wait_line(report.wait_share, i.boot_seconds)}")
        if even is not None:
            print(f"  break-even: always-on is cheaper above {even:.2f} h/day of use")
        else:
            print("  break-even: none, autoscaling is cheaper at any hours of use")
        print(
            "  which window is cheapest for your traffic, and how often it waits: "
            "vllm-autoscale cost --traffic LOG (or --profile office-hours)"
        )
    if args.plot:
        _plot_cost(curve(inputs), args.plot, args.preset, report)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _wait_line(share: float | None, boot: float) -> str:
    if share is None:
        return f"one wake a day: the day's first request waits for the boot ({boot:g} s)"
    return (
        f"{share:.0%} of requests wait for a boot (up to {boot:g} s): each wake's first "
        "request and those arriving during its boot (Poisson arrivals)"
    )


def _plot_cost(points: list[dict[str, float]], path: str, preset: str, report: Any) -> None:
    _need("matplotlib", "plot", "`vllm-autoscale cost --plot`")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i = report.inputs
    fig, ax = plt.subplots(figsize=(7, 4.2))
    hours = [p["hours_per_day"] for p in points]
    ax.plot(hours, [p["autoscaled"] for p in points], label="autoscaled (boots + idle tails)")
    ax.plot(hours, [p["always_on"] for p in points], label="always on", linestyle="--")
    # The user's own input, so the curve answers "and where am I on it?"
    mine = f"you: {i.hours_per_day:g} h/day, ${report.autoscaled_monthly:,.0f}/month"
    if report.wait_share is not None:
        mine += f"\n{report.wait_share:.0%} of requests wait for a boot"
    ax.scatter([i.hours_per_day], [report.autoscaled_monthly], color="crimson", zorder=3)
    ax.annotate(mine, (i.hours_per_day, report.autoscaled_monthly), xytext=(0.04, 0.62),
                textcoords="axes fraction", fontsize=8, color="crimson",
                arrowprops={"arrowstyle": "->", "color": "crimson"})  # fmt: skip
    ax.set_xlabel("hours of use per day")
    ax.set_ylabel("USD per month")
    rate = f"{i.requests_per_hour:g} requests/h, " if i.requests_per_hour else ""
    ax.set_title(
        f"Monthly cost ({preset}): {rate}window {i.scaledown_window:g} s, "
        f"boot {i.boot_seconds:g} s",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _advisor_trace(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The trace to replay and the schedules it suggests by itself."""
    from . import advisor

    if args.traffic:
        if args.requests_per_hour is not None:
            raise ValueError("--requests-per-hour sets a --profile's rate, not a trace's")
        return advisor.load_traffic(args.traffic), []
    rate = 40.0 if args.requests_per_hour is None else args.requests_per_hour
    trace = advisor.profile(args.profile, rate, seed=args.seed, zone=args.zone)
    if args.profile == "office-hours":
        return trace, [advisor.office_hours_schedule(args.zone)]
    return trace, []


def _advise(args: argparse.Namespace) -> int:
    """`cost --traffic/--profile`: replay the traffic under each setting, pick a window."""
    import json

    from . import advisor
    from .cost import inputs_from_preset

    share = args.max_wait_share
    try:
        if share is not None and not 0 <= share <= 1:
            raise ValueError(f"--max-wait-share is a fraction: 0.05 is 5%, not {share:g}")
        if args.max_mean_wait is not None and args.max_mean_wait < 0:
            raise ValueError("--max-mean-wait is seconds, 0 or more")
        inputs = inputs_from_preset(
            args.preset,
            gpu_price_per_hour=args.gpu_price,
            gpu_count=args.gpu_count,
            boot_seconds=args.boot_seconds,
            wrapper_price_per_hour=args.wrapper_price,
        )
        trace, schedules = _advisor_trace(args)
        schedules += args.warm_schedule or []
        windows = [
            *advisor.DEFAULT_WINDOWS,
            *([args.scaledown_window] * bool(args.scaledown_window)),
        ]
        rows = advisor.sweep(trace, inputs, windows, schedules)
        best = advisor.recommend(rows, share, args.max_mean_wait)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_advice_json(args, trace, inputs, rows, best), indent=2))
    else:
        _advice_table(args, trace, inputs, rows, best)
    if args.plot:
        _plot_frontier(rows, best, args.plot, trace, inputs, share, args.max_mean_wait)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _advice_json(args: argparse.Namespace, trace: Any, inputs: Any, rows: list, best: Any) -> dict:
    from dataclasses import asdict

    prices = {k: v for k, v in asdict(inputs).items() if k not in ("hours_per_day",
              "requests_per_hour", "scaledown_window")}  # fmt: skip
    return {
        "trace": {
            "name": trace.name,
            "requests": len(trace.times),
            "start": trace.start,
            "end": trace.end,
            "days": trace.days,
            "scaled_to_days": inputs.days_per_month,
        },
        "preset": args.preset,
        "prices": prices,
        "budget": {"max_wait_share": args.max_wait_share, "max_mean_wait": args.max_mean_wait},
        "rows": [r.to_dict() for r in rows],
        "recommended": {"label": best.row.label, "fits": best.fits, "reason": best.reason},
    }


def _advice_note(row: Any, best: Any, mine: float | None) -> str:
    from .advisor import SEED_WINDOW

    notes = []
    if row is best.row:
        notes.append("<- recommended" if best.fits else "<- least waiting (none fits)")
    if row.schedule is None and row.window == SEED_WINDOW:
        notes.append("seed default")
    if row.schedule is None and mine is not None and row.window == mine:
        notes.append("yours")
    return ", ".join(notes)


def _advice_table(args: argparse.Namespace, trace: Any, inputs: Any, rows: list, best: Any) -> None:
    from rich.table import Table

    console = _console()
    table = Table(
        title=f"{trace.name}: {len(trace.times):,} requests over {trace.days:.1f} days, "
        f"figures scaled to {inputs.days_per_month} days",
        caption=f"preset {args.preset}: GPU ${inputs.gpu_price_per_hour:.2f}/h x "
        f"{inputs.gpu_count}, wrapper ${inputs.wrapper_price_per_hour:g}/h, "
        f"boot {inputs.boot_seconds:g} s",
    )
    headers = ("setting", "USD/month", "GPU h/month", "cold starts/day", "requests waiting",
               "mean wait s", "p95 wait s", "")  # fmt: skip
    for n, header in enumerate(headers):
        number = 0 < n < len(headers) - 1
        table.add_column(header, justify="right" if number else "left", no_wrap=number)
    for row in rows:
        table.add_row(
            row.label,
            f"{row.monthly:,.2f}",
            f"{row.gpu_hours_month:,.1f}",
            f"{row.cold_starts_per_day:,.1f}",
            f"{row.wait_share:.1%}",
            f"{row.mean_wait:.1f}",
            f"{row.p95_wait:.0f}",
            _advice_note(row, best, args.scaledown_window),
            style="bold green" if row is best.row else None,
        )
    console.print(table)
    console.print(("recommended: " if best.fits else "no setting fits: ") + best.reason,
                  highlight=False, soft_wrap=True)  # fmt: skip


def _short_label(row: Any, schedules: list[str]) -> str:
    if row.window is None:
        return "always on"
    if row.schedule is None:
        return f"{row.window:g} s"
    number = f" {schedules.index(row.schedule) + 1}" if len(schedules) > 1 else ""
    return f"warm{number} + {row.window:g} s"


def _plot_frontier(
    rows: list,
    best: Any,
    path: str,
    trace: Any,
    inputs: Any,
    max_wait_share: float | None,
    max_mean_wait: float | None,
) -> None:
    """Monthly cost against waiting, one point per setting: the cost / cold-wait frontier."""
    _need("matplotlib", "plot", "`vllm-autoscale cost --plot`")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    by_mean = max_mean_wait is not None and max_wait_share is None
    x_of = (lambda r: r.mean_wait) if by_mean else (lambda r: 100 * r.wait_share)
    schedules = list(dict.fromkeys(r.schedule for r in rows if r.schedule))
    fig, ax = plt.subplots(figsize=(8, 5))
    for family in [None, *schedules]:
        group = [r for r in rows if r.schedule == family and r.window is not None]
        name = "scale to zero" if family is None else f"warm {family}"
        ax.plot([x_of(r) for r in group], [r.monthly for r in group], marker="o",
                markersize=4, linewidth=1, label=name)  # fmt: skip
    on = [r for r in rows if r.window is None]
    ax.scatter([x_of(r) for r in on], [r.monthly for r in on], marker="s", color="black",
               label="always on")  # fmt: skip
    ax.scatter([x_of(best.row)], [best.row.monthly], s=220, marker="*", color="crimson",
               zorder=4, label=f"recommended: {_short_label(best.row, schedules)}")  # fmt: skip
    budget = max_mean_wait if by_mean else 100 * (max_wait_share or 0.05)
    ax.axvline(budget, color="crimson", linestyle=":",
               label=f"budget: {budget:g}{' s' if by_mean else '%'}")  # fmt: skip
    ax.set_xlabel("mean wait for a boot, s" if by_mean else "requests that wait for a boot, %")
    ax.set_ylabel("USD per month")
    # Always on is often several times the rest, and the useful settings crowd near zero
    # waiting: log cost, and an x axis linear up to the budget and logarithmic past it.
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=max(budget, 1e-3))
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:g}"))
    _label_points(ax, rows, best.row, x_of, schedules)
    ax.set_title(
        f"{trace.name}: {len(trace.times):,} requests over {trace.days:.1f} days\n"
        f"monthly cost vs cold waits (boot {inputs.boot_seconds:g} s)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label_points(ax: Any, rows: list, best: Any, x_of: Any, schedules: list[str]) -> None:
    """Label each point, the recommended first, skipping labels that would overprint one."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before reading positions
    placed: list[tuple[float, float]] = []
    for row in sorted(rows, key=lambda r: r is not best):
        x, y = ax.transData.transform((x_of(row), row.monthly))  # pixels
        if any(abs(x - px) < 45 and abs(y - py) < 10 for px, py in placed):
            continue
        placed.append((x, y))
        ax.annotate(_short_label(row, schedules), (x_of(row), row.monthly), xytext=(5, 4),
                    textcoords="offset points", fontsize=7)  # fmt: skip


class CliError(Exception):
    """One readable line, plus a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _http_client() -> Any:
    """The client every wrapper call uses (tests replace it with a mock transport's)."""
    import httpx

    return httpx.Client(timeout=30, follow_redirects=True)


def _error_message(resp: Any) -> str:
    """The message of an OpenAI-shaped error body, on one line; else the body's start."""
    try:
        error = resp.json().get("error")
        message = str(error["message"]) if isinstance(error, dict) else ""
    except (ValueError, AttributeError, KeyError):
        message = ""
    return " ".join((message or resp.text[:300]).split())


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """One request to the wrapper: its JSON answer (None for 204), or a one-line CliError."""
    import httpx

    url = (args.url or os.environ.get("VLLM_AUTOSCALE_URL") or "http://127.0.0.1:8000").rstrip("/")
    key = args.api_key or os.environ.get("VLLM_AUTOSCALE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    params = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        with _http_client() as client:
            resp = client.request(method, url + path, headers=headers, params=params, json=body)
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the wrapper at {url} ({type(exc).__name__})",
            "is it running? `vllm-autoscale serve --local`, or set --url / VLLM_AUTOSCALE_URL "
            "to your Modal URL",
        ) from exc
    if resp.status_code < 400:
        return None if resp.status_code == 204 else resp.json()
    message = _error_message(resp)
    if resp.status_code == 401:
        raise CliError(
            f"the wrapper at {url} refused the API key: {message}",
            "set --api-key or VLLM_AUTOSCALE_API_KEY (the VLLM_WRAPPER_API_KEY of the "
            "vllm-secrets Modal Secret)",
        )
    if resp.status_code == 404 and message in ("Not Found", ""):
        raise CliError(f"{url}{path} does not exist", "is --url the wrapper's base URL?")
    raise CliError(f"{method} {path} answered {resp.status_code}: {message}")


def _show_status(status: dict) -> str:
    window = status.get("scaledown_window")
    line = (
        f"engine {status['state']} | model {status.get('model')} | in flight "
        f"{status.get('in_flight', 0)}, queued {status.get('queue_depth', 0)} | cold starts "
        f"{status.get('cold_starts', 0)} | scaledown window "
        + (f"{window:g} s" if window else "off")
    )
    if status.get("last_error"):
        line += f"\nlast error: {status['last_error']}"
    return line


def _status(args: argparse.Namespace) -> int:
    status = _call(args, "GET", "/status")
    if args.json:
        import json

        print(json.dumps(status, indent=2))
    else:
        print(_show_status(status))
    return 1 if status["state"] == "failed" else 0


def _warmup(args: argparse.Namespace) -> int:
    import time

    status = _call(args, "POST", "/warmup")
    started = time.monotonic()
    try:
        from rich.console import Console

        console: Any = Console(stderr=True)
    except ImportError:
        console = None
    if args.no_wait or status["state"] == "warm":
        print(_show_status(status))
        return 0
    spinner = console.status("waking the engine...") if console else contextlib.nullcontext()
    with spinner as live:
        while status["state"] in ("cold", "starting"):
            elapsed = time.monotonic() - started
            if elapsed > args.timeout:
                raise CliError(
                    f"the engine is still {status['state']} after {elapsed:.0f} s",
                    "a first start downloads the weights (minutes): raise --timeout",
                )
            message = f"engine {status['state']}... {elapsed:.0f} s"
            if live is not None:
                live.update(message)
            else:
                print(message, file=sys.stderr, flush=True)
            time.sleep(2)
            status = _call(args, "GET", "/status")
    if status["state"] == "failed":
        raise CliError(
            f"the engine failed to start: {status.get('last_error')}",
            "read the GPU function's log: `modal app logs vllm-autoscale`",
        )
    print(f"warm after {time.monotonic() - started:.0f} s")
    print(_show_status(status))
    return 0


def _console() -> Any:
    """Rich's console on stdout; piped, wide enough that no table cell is cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _table(
    title: str,
    headers: Sequence[str],
    rows: list[list[str]],
    *,
    text_columns: int,
    totals: list[str] | None = None,
    caption: str | None = None,
) -> None:
    """A rich table: the first ``text_columns`` columns left, the numbers right and whole."""
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for i, header in enumerate(headers):
        number = i >= text_columns
        table.add_column(header, justify="right" if number else "left", no_wrap=number)
    for row in rows:
        table.add_row(*row)
    if totals is not None:
        table.add_section()
        table.add_row(*totals, style="bold")
    _console().print(table)


def _number(value: Any, places: int | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:,.{places}f}" if places is not None else f"{value:,}"


USAGE_COLUMNS = (
    ("requests", "requests", None),
    ("cache hits", "cache_hits", None),
    ("prompt tok", "prompt_tokens", None),
    ("completion tok", "completion_tokens", None),
    ("cached tok", "cached_tokens", None),
    ("GPU s", "gpu_seconds", 1),
    ("cold starts", "cold_starts", None),
    ("cost USD", "cost_usd", 4),
)


def _usage_numbers(counters: dict[str, Any]) -> list[str]:
    return [_number(counters.get(field), places) for _, field, places in USAGE_COLUMNS]


def _usage(args: argparse.Namespace) -> int:
    import json

    params = {"start": args.start, "end": args.end, "key": args.key}
    answer = _call(args, "GET", "/v1/usage", params=params)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    title = (
        f"usage of {answer.get('key') or 'every key'}, from {answer.get('start') or 'the start'} "
        f"to {answer.get('end') or 'today'} (UTC)"
    )
    rows = [[r["date"], r["key"], r["model"], *_usage_numbers(r)] for r in answer["data"]]
    _table(
        title,
        ["date", "key", "model", *(header for header, _, _ in USAGE_COLUMNS)],
        rows,
        text_columns=3,
        totals=["total", "", "", *_usage_numbers(answer.get("totals", {}))],
    )
    return 0


KEY_LIMITS = (
    ("rpm", "rpm", None),
    ("tpm", "tpm", None),
    ("max streams", "max_streams", None),
    ("budget USD/month", "monthly_budget_usd", 2),
)


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line; one left out takes the VLLM_DEFAULT_* one."""
    given = {
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_streams": args.max_streams,
        "monthly_budget_usd": args.budget,
    }
    return {k: v for k, v in given.items() if v is not None}


def _describe_key(record: dict[str, Any]) -> str:
    limits = (f"{header} {_number(record.get(f), p)}" for header, f, p in KEY_LIMITS)
    return (
        f"name {record.get('name')} | role {record.get('role')} | "
        + " | ".join(limits)
        + f" | source {record.get('source')}  (- = unlimited)"
    )


def _toml_entry(entry: dict[str, Any]) -> str:
    import json

    # JSON's strings and numbers are TOML's too (names and hashes are plain ASCII).
    return "\n".join(["[[keys]]", *(f"{k} = {json.dumps(v)}" for k, v in entry.items())])


def _keys_new(args: argparse.Namespace) -> int:
    import json

    from ..gateway.keys import hash_key, new_key, parse_entries

    token = new_key()
    entry = {"name": args.name, "sha256": hash_key(token), "role": args.role, **_limits(args)}
    try:
        parse_entries([entry], "keys new")  # what the wrapper will read must load
    except ValueError as exc:
        raise CliError(str(exc).split(": ", 1)[-1]) from None
    # The key on stderr, the entry alone on stdout: `keys new NAME >> keys.toml` appends an
    # entry that loads, and the key is still shown once.
    print(f"key (shown once): {token}", file=sys.stderr)
    print(_toml_entry(entry) if args.format == "toml" else json.dumps([entry], indent=2))
    print(
        f"add the entry to a .{args.format} keys file (VLLM_API_KEYS_FILE)"
        + (" or to the list in VLLM_API_KEYS" if args.format == "json" else "")
        + "; it holds the key's sha256, never the key",
        file=sys.stderr,
    )
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    import json

    records = [
        {k: v for k, v in r.items() if k not in ("key", "sha256")}
        for r in _call(args, "GET", "/v1/keys")["data"]
    ]
    if args.json:
        print(json.dumps({"object": "list", "data": records}, indent=2))
        return 0
    rows = [
        [r["name"], r["role"], r["source"], *(_number(r.get(f), p) for _, f, p in KEY_LIMITS)]
        for r in records
    ]
    headers = ["name", "role", "source", *(header for header, _, _ in KEY_LIMITS)]
    _table("API keys", headers, rows, text_columns=3, caption="- = unlimited")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "role": args.role, **_limits(args)}
    record = _call(args, "POST", "/v1/keys", body=body)
    print(f"key (shown once): {record.pop('key')}")
    print(_describe_key(record))
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    _call(args, "DELETE", f"/v1/keys/{quote(args.name, safe='')}")
    print(f"revoked key {args.name!r} (other wrappers drop it within their key sync interval)")
    return 0


SECRET_NAME = "vllm-secrets"
OWN_TEMPLATE = "the model's own"


def _secret_hint(settings: Any) -> str:
    token = " HF_TOKEN=hf_..." if settings.model.startswith("meta-llama/") else ""
    return (
        "create it (the key is what your clients send as VLLM_AUTOSCALE_API_KEY):\n"
        "  export VLLM_AUTOSCALE_API_KEY=$(python3 -c 'import secrets; "
        "print(secrets.token_urlsafe(32))')\n"
        f"  modal secret create {SECRET_NAME} VLLM_WRAPPER_API_KEY=$VLLM_AUTOSCALE_API_KEY{token}"
    )


def _check_secret(settings: Any) -> None:
    """The Secret both containers mount must exist before the deploy, or nothing serves."""
    import modal
    from modal.exception import AuthError, NotFoundError

    try:
        modal.Secret.from_name(SECRET_NAME).hydrate()
    except AuthError as exc:
        raise CliError("not logged in to Modal", "run `modal token new` once") from exc
    except NotFoundError as exc:
        raise CliError(
            f"the Modal Secret {SECRET_NAME!r} does not exist", _secret_hint(settings)
        ) from exc


def _print_manifests(settings: Any) -> None:
    from ..cloud.manifest import collect

    try:
        manifests = collect()
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    for name, m in manifests.items():
        print(f"\ncontainer {name} (imports {m['module']}; GPU {m['gpu'] or 'none'})")
        print(f"  image   {m['base'].removeprefix('FROM ')} + {', '.join(m['packages'])}")
        print(f"  env     {', '.join(sorted(m['env']))}  (secrets: {', '.join(m['secrets'])})")
        print(f"  files   {len(m['files'])}")
        for remote in m["files"]:
            print(f"    {remote}")


def _deploy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..settings.settings import Settings

    try:
        settings = Settings()
    except ValueError as exc:
        raise CliError(
            f"bad settings: {exc}", "see docs/deploy-modal.md for VLLM_* settings"
        ) from exc
    app_file = Path(__file__).resolve().parent.parent / "modal_app.py"
    # modal from this environment, whatever is on PATH; file mode, as the guide runs it.
    command = [sys.executable, "-m", "modal", "deploy", str(app_file)]
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
    _need("modal", "modal", "`vllm-autoscale deploy`")
    if app_file.parent.name != "deploy":
        # modal_app.py imports `deploy`, and modal ships the checkout's files: an installed
        # copy of the server is not a checkout.
        raise CliError(
            "`vllm-autoscale deploy` ships the files of a clone of the repository; run it "
            "from one (git clone, then pip install -e . -e './deploy[modal]')"
        )
    if args.dry_run:
        _print_manifests(settings)
        print("\n$ modal deploy " + str(app_file))
        return 0
    _check_secret(settings)
    print("$ modal deploy " + str(app_file))
    return subprocess.call(command, cwd=app_file.parent.parent)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def _amount(text: str) -> float:
    import math

    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not an amount >= 0")
    return value


def _day(text: str) -> str:
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date, YYYY-MM-DD") from None


def _add_http_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--url", default=None, help="wrapper URL (default VLLM_AUTOSCALE_URL)")
    cmd.add_argument("--api-key", default=None, help="default VLLM_AUTOSCALE_API_KEY")


def _add_key_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("name", help="the key's name: 1-64 of A-Z a-z 0-9 _ . @ -")
    cmd.add_argument("--role", choices=("user", "admin"), default="user")
    for flag, unit in (("--rpm", "requests"), ("--tpm", "tokens")):
        cmd.add_argument(flag, type=_count, help=f"{unit} per minute (default VLLM_DEFAULT_*)")
    cmd.add_argument("--max-streams", type=_count, help="concurrent requests")
    cmd.add_argument("--budget", type=_amount, help="monthly budget, USD")


def _add_gateway_commands(sub: Any) -> None:
    usage = sub.add_parser(
        "usage",
        help="requests, tokens, GPU seconds and cost per day, key and model",
        description="Usage from the wrapper's ledger: a key sees its own, an admin key every "
        "key's (or one, with --key). Days are UTC and inclusive.",
    )
    _add_http_args(usage)
    usage.add_argument("--start", type=_day, default=None, help="first day, YYYY-MM-DD")
    usage.add_argument("--end", type=_day, default=None, help="last day, YYYY-MM-DD")
    usage.add_argument("--key", default=None, help="only this key's usage (admin keys)")
    usage.add_argument("--json", action="store_true", help="the wrapper's JSON answer")
    usage.set_defaults(func=_usage)

    keys = sub.add_parser("keys", help="make API keys; list, create and revoke a wrapper's")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    new = keys_sub.add_parser(
        "new",
        help="generate a key offline: print it once, and its entry for a keys file",
        description="Generate a key on this machine (no wrapper involved). The key is printed "
        "once; the entry for VLLM_API_KEYS_FILE (or VLLM_API_KEYS) holds only its sha256.",
    )
    _add_key_args(new)
    new.add_argument("--format", choices=("toml", "json"), default="toml")
    new.set_defaults(func=_keys_new)
    for name, func, text in (
        ("list", _keys_list, "every key of the wrapper: role, limits, source (admin key)"),
        ("create", _keys_create, "create a key on the wrapper; it is printed once (admin key)"),
        ("revoke", _keys_revoke, "revoke a key created on the wrapper (admin key)"),
    ):
        cmd = keys_sub.add_parser(name, help=text, description=text)
        _add_http_args(cmd)
        cmd.set_defaults(func=func)
        if name == "list":
            cmd.add_argument("--json", action="store_true")
        elif name == "create":
            _add_key_args(cmd)
        else:
            cmd.add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-autoscale", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser(
        "serve",
        help="run wrapper + engine locally",
        description="Run the wrapper and a local vLLM engine. With a command after --, wait "
        "until the engine is warm, run the command with VLLM_AUTOSCALE_URL set, then stop.",
    )
    serve.add_argument("--local", action="store_true", help="run the engine on this machine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--scaledown-window", type=float, default=None,
        help="idle seconds before the engine stops "
        "(default: VLLM_SCALEDOWN_WINDOW or 120; 0 = never)",
    )  # fmt: skip
    serve.add_argument(
        "--warm", action="store_true", help="start the engine now, not on the first request"
    )
    serve.add_argument(
        "--engine-log",
        default=None,
        help="write vLLM's output here (default: stderr; with a command, the cache folder)",
    )
    serve.add_argument("--log-level", default=None, help="INFO by default; WARNING with a command")
    serve.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- COMMAND to run against the stack"
    )
    serve.set_defaults(func=_serve)

    cost = sub.add_parser(
        "cost",
        help="monthly cost: always on vs scaled to zero; with traffic, which window to pick",
        description="Without --traffic or --profile: the cost model for hours of use a day. "
        "With one: replay the traffic under each scaledown window (and warm schedule) and "
        "recommend the cheapest setting within a wait budget (docs/cold-starts.md).",
    )
    cost.add_argument("--preset", default="modal-a100-80gb", help="seed, modal-a100-80gb, ...")
    cost.add_argument("--hours", type=float, default=None, help="hours of use per day")
    cost.add_argument(
        "--requests-per-hour", type=float, default=None,
        help="request rate during the hours of use; with --profile, its rate (default 40)",
    )  # fmt: skip
    cost.add_argument("--gpu-price", type=float, default=None, help="USD per GPU-hour")
    cost.add_argument("--gpu-count", type=int, default=None)
    cost.add_argument(
        "--scaledown-window", type=float, default=None,
        help="idle seconds before the GPU is released; with traffic, one more to try",
    )  # fmt: skip
    cost.add_argument("--boot-seconds", type=float, default=None)
    cost.add_argument("--wrapper-price", type=float, default=None, help="USD per wrapper-hour")
    traffic = cost.add_mutually_exclusive_group()
    traffic.add_argument(
        "--traffic", default=None, metavar="FILE",
        help="request times: the wrapper's JSON log, a CSV with a timestamp column, "
        "or one timestamp a line",
    )  # fmt: skip
    traffic.add_argument(
        "--profile", default=None, choices=("office-hours", "bursty", "uniform"),
        help="a synthetic month of traffic instead of a trace",
    )  # fmt: skip
    cost.add_argument("--seed", type=int, default=0, help="the --profile's random seed")
    cost.add_argument("--zone", default="UTC", help="the office-hours profile's time zone")
    cost.add_argument(
        "--max-wait-share", type=float, default=None,
        help="wait budget: the share of requests that may wait for a boot "
        "(default 0.05 unless --max-mean-wait)",
    )  # fmt: skip
    cost.add_argument(
        "--max-mean-wait", type=float, default=None,
        help="wait budget: the mean wait in seconds over all requests",
    )  # fmt: skip
    cost.add_argument(
        "--warm-schedule", action="append", default=None, metavar="SCHEDULE",
        help="a warm schedule to try as well, e.g. '0 9 * * mon-fri 9h Europe/Paris' "
        "(repeatable)",
    )  # fmt: skip
    cost.add_argument("--json", action="store_true")
    cost.add_argument(
        "--plot", default=None, metavar="FILE",
        help="write a PNG: cost vs hours/day, or with traffic, cost vs requests that wait",
    )  # fmt: skip
    cost.set_defaults(func=_cost)

    for name, func, text in (
        ("status", _status, "engine state, queue and cold starts of a wrapper (never wakes it)"),
        ("warmup", _warmup, "wake the engine and show progress until it is warm"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        _add_http_args(cmd)
        cmd.set_defaults(func=func)
        if name == "status":
            cmd.add_argument("--json", action="store_true")
        else:
            cmd.add_argument("--no-wait", action="store_true", help="ask and return at once")
            cmd.add_argument("--timeout", type=float, default=900)

    deploy = sub.add_parser(
        "deploy",
        help="modal deploy the wrapper and the GPU class",
        description="Check the vllm-secrets Modal Secret exists, then `modal deploy`. "
        "Settings are the VLLM_* environment variables (docs/deploy-modal.md).",
    )
    deploy.add_argument(
        "--dry-run",
        action="store_true",
        help="print the settings, the engine's parsers and each container's image and files",
    )
    deploy.set_defaults(func=_deploy)
    _add_gateway_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    logging.captureWarnings(True)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
