"""``omni``: publish events, read dead letters, rebuild the Redis read model, erase,
check the whole pipeline (``omni doctor``) and serve the Customer 360 API (``omni api``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from processors.settings import TOUCHPOINT_CHANNELS, Settings

app = typer.Typer(
    help="Omnichannel pipeline tools. Settings come from OMNI_* variables.",
    no_args_is_help=True,
    add_completion=False,
)
redis_app = typer.Typer(help="The Redis read model.", no_args_is_help=True)
app.add_typer(redis_app, name="redis")
console = Console(stderr=True)

PROGRESS_FROM_BYTES = 1 << 20  # show a progress bar for files of 1 MiB and more


@app.command()
def publish(
    file: Annotated[str, typer.Option("--file", "-f", help="JSON Lines file, or - for stdin")],
) -> None:
    """Publish each line of FILE as one touchpoint event; report every rejected line."""
    from producers.publish import no_such_file, publish_lines

    if file == "-":
        report = publish_lines(sys.stdin.buffer, Settings())
    else:
        path = Path(file)
        if not path.is_file():
            console.print(f"[red]{no_such_file(file)}")
            raise typer.Exit(2)
        size = path.stat().st_size
        with path.open("rb") as lines:
            if size < PROGRESS_FROM_BYTES:
                report = publish_lines(lines, Settings())
            else:
                with Progress(console=console) as progress:
                    task = progress.add_task(f"publishing {path.name}", total=size)
                    report = publish_lines(
                        lines,
                        Settings(),
                        on_line=lambda n: progress.update(task, advance=n),
                    )
    for line in report.rejected_lines(mark=lambda reason: f"[red]{reason}[/red]"):
        console.print(line)
    console.print(report.summary())
    if report.rejected:
        raise typer.Exit(1)


@app.command()
def deadletters(
    channel: Annotated[str | None, typer.Option(help="Only this channel's topic")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason code")] = None,
    limit: Annotated[int, typer.Option(help="Newest records per partition to read")] = 50,
) -> None:
    """Show recent dead letters, so a channel backend can see what it got wrong."""
    from processors.tools.deadletters import read_recent

    if channel is not None and channel not in TOUCHPOINT_CHANNELS:
        console.print(f"[red]Unknown channel {channel!r}; one of {', '.join(TOUCHPOINT_CHANNELS)}")
        raise typer.Exit(2)
    settings = Settings()
    records = read_recent(settings, limit, channel=channel, reason=reason)
    table = Table("received_at", "reason", "source", "errors", title="Dead letters")
    for record in records:
        source = record["source"]
        table.add_row(
            record["received_at"],
            record["reason"],
            f"{source['topic']}[{source['partition']}]@{source['offset']}",
            "\n".join(record["errors"]),
        )
    Console().print(table)
    console.print(f"{len(records)} dead letters shown")


@app.command()
def stats() -> None:
    """Offer performance per rule and channel, live (S11): sent, suppressed, responses, lift."""
    from processors.tools.stats import rates, read_stats

    settings = Settings()
    totals = read_stats(settings.redis_client())
    if not totals:
        typer.echo("No offer statistics yet: is the worker running and have rules matched?")
        return
    table = Table(title="Offer performance (omni:stats:*)")
    for column in (
        "rule",
        "channel",
        "emitted",
        "suppressed",
        "accepted",
        "declined",
        "ignored",
        "value",
        "conversion",
        "control conv.",
        "lift",
    ):
        table.add_column(
            column, justify="left" if column in ("rule", "channel", "suppressed") else "right"
        )

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for (rule, channel), counters in sorted(totals.items()):
        suppressed = ", ".join(
            f"{name.split(':', 1)[1]} {int(n)}"
            for name, n in sorted(counters.items())
            if name.startswith("suppressed:")
        )
        r = rates(counters)
        table.add_row(
            rule,
            channel,
            f"{int(counters.get('emitted', 0) + counters.get('released', 0))}",
            suppressed or "-",
            f"{int(counters.get('accepted', 0))}",
            f"{int(counters.get('declined', 0))}",
            f"{int(counters.get('ignored', 0))}",
            f"{counters.get('accepted_value', 0):.2f}",
            pct(r["conversion"]),
            pct(r["control_conversion"]),
            pct(r["lift"]),
        )
    # Eleven columns do not fit 80: wider than the terminal beats unreadable cells.
    console = Console()
    console.width = max(console.width, 150)
    console.print(table)


@app.command()
def erase(
    customer_id: Annotated[str, typer.Argument(help="The customer to forget (the message key)")],
    request_id: Annotated[
        str | None,
        typer.Option(help="The CRM's id of the erasure request; a new UUID when not given"),
    ] = None,
) -> None:
    """Forget a customer: publish privacy.erasure_requested for her on touchpoint.crm."""
    import uuid

    from processors.tools.erase import request_erasure
    from producers.sdk import EventRejected

    request = request_id if request_id is not None else str(uuid.uuid4())
    try:
        event = request_erasure(Settings(), customer_id, request)
    except EventRejected as rejected:
        for error in rejected.errors:
            console.print(f"[red]{rejected.reason}: {error}")
        raise typer.Exit(2) from None
    except RuntimeError as failed:
        console.print(f"[red]{failed}")
        raise typer.Exit(1) from None
    console.print(
        f"erasure requested: request_id {request}, event_id {event['event_id']}; the worker "
        "logs a decision with outcome erased on decision.log when it is done"
    )


@redis_app.command("rebuild")
def redis_rebuild() -> None:
    """Rewrite the read model in Redis from the customer state changelog."""
    from processors.tools.rebuild import rebuild_read_model

    customers, keys = rebuild_read_model(Settings())
    console.print(f"rebuilt {keys} keys for {customers} customers")


@app.command()
def api() -> None:
    """Serve the read-only Customer 360 HTTP API over the Redis read model.

    Listens on OMNI_API_HOST:OMNI_API_PORT (0.0.0.0:8081); callers from OMNI_API_TOKENS
    (README "Customer 360 API"). Without callers it refuses to start (exit 2).
    """
    from processors.api import ApiTokensError, run_api
    from processors.api.auth import parse_api_tokens

    settings = Settings()
    secret = settings.api_tokens
    try:
        parse_api_tokens(None if secret is None else secret.get_secret_value())
    except ApiTokensError as refused:
        # Not wrapped (rich would cut the JSON to set): one line to copy.
        typer.echo(f"omni api: refusing to start: {refused}", err=True)
        raise typer.Exit(2) from None
    run_api(settings)


@app.command()
def simulate(
    customers: Annotated[int, typer.Option(help="Background customers")] = 200,
    rate: Annotated[float, typer.Option(help="Background events per second")] = 20.0,
    seconds: Annotated[float, typer.Option(help="How long to play; 0 = until Ctrl-C")] = 0.0,
) -> None:
    """Play stories S1 and S5 and a trickle of background traffic."""
    from producers.simulator import run_simulation

    run_simulation(Settings(), customers=customers, rate=rate, seconds=seconds)


@app.command()
def doctor(
    worker_url: Annotated[
        str | None,
        typer.Option(help="The worker's health base URL; default OMNI_WEB_BIND:OMNI_WEB_PORT"),
    ] = None,
    metrics_url: Annotated[
        str | None,
        typer.Option(help="The worker's /metrics URL; default OMNI_WEB_BIND:OMNI_METRICS_PORT"),
    ] = None,
    lag_warn: Annotated[
        int, typer.Option(help="Warn when a source topic has more uncommitted messages")
    ] = 1000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer")] = 5.0,
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per check")] = False,
) -> None:
    """Check the pipeline: broker, topics, group and lag, Redis, the worker and its rules.

    Exit 0 when every check is ok or only warns, 1 when one fails (--strict: or warns).
    """
    import dataclasses
    import json

    from processors.tools.doctor import Status, default_options, exit_code, run_doctor

    settings = Settings()
    options = default_options(settings, timeout)
    options = dataclasses.replace(
        options,
        worker_url=worker_url or options.worker_url,
        metrics_url=metrics_url or options.metrics_url,
        lag_warn=lag_warn,
    )
    checks = run_doctor(settings, options)
    if json_output:
        for check in checks:
            typer.echo(json.dumps(check.as_json()))
    else:
        colours = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "red"}
        table = Table("check", "status", "found", "what to do", title="omni doctor")
        for check in checks:
            colour = colours[check.status]
            table.add_row(
                check.name, f"[{colour}]{check.status.value}[/{colour}]", check.detail, check.action
            )
        out = Console()
        out.width = max(out.width, 140)  # four columns of sentences: wrap less, read better
        out.print(table)
        failed = sum(check.status is Status.FAIL for check in checks)
        warned = sum(check.status is Status.WARN for check in checks)
        console.print(f"{len(checks)} checks: {failed} failed, {warned} warned")
    raise typer.Exit(exit_code(checks, strict))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
