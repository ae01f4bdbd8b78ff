"""The command line: every command has --help, usage errors exit 2, durations parse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alert_worker.cli import build_parser, main, parse_since

COMMANDS = [
    [],
    ["run"],
    ["migrate"],
    ["send"],
    ["status"],
    ["poison"],
    ["poison", "list"],
    ["poison", "replay"],
    ["poison", "resolve"],
    ["sweep"],
    ["check"],
    ["cooldown", "list"],
    ["cooldown", "clear"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top-level")
def test_every_command_has_help_that_exits_0(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` prints usage and exits 0 without touching any server."""
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert "usage: alert-worker" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["send", "--to", "x"],
        ["send", "--channel", "fax", "--to", "x"],
        ["poison"],
        ["poison", "replay"],
        ["poison", "replay", "d-1", "--all"],
        ["poison", "replay", "d-1", "--channel", "email"],
        ["poison", "list", "--limit", "0"],
        ["poison", "list", "--since", "yesterday"],
        ["poison", "resolve"],
        ["run", "--worker-class", "no.such.Worker"],
        ["run", "--worker-class", "alert_worker.settings.Settings"],
        ["run", "--threads", "many"],
        ["cooldown", "clear", "--channel", "slack"],
        ["cooldown", "clear", "--channel", "slack", "--all", "--hash", "0123456789abcdef"],
    ],
    ids=[
        "unknown-command",
        "send-without-channel",
        "send-unknown-channel",
        "poison-without-action",
        "replay-without-ids-or-all",
        "replay-ids-and-all",
        "replay-ids-with-channel-filter",
        "list-limit-zero",
        "list-bad-since",
        "resolve-without-ids",
        "unimportable-worker-class",
        "not-a-worker-class",
        "threads-not-a-number",
        "cooldown-clear-without-target",
        "cooldown-clear-all-and-hash",
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse rejects the command line before any connection is opened."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_no_command_means_run_and_accepts_the_run_options() -> None:
    """``alert-worker --burst`` is ``alert-worker run --burst``."""
    args = build_parser().parse_args(["--burst", "--worker-class", "rq.worker.SimpleWorker"])
    assert args.command is None and args.burst is True
    assert args.worker_class.__name__ == "SimpleWorker"
    run = build_parser().parse_args(["run"])
    assert run.command == "run" and not run.burst and run.worker_class is None


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("30s", datetime(2026, 11, 28, 11, 59, 30, tzinfo=UTC)),
        ("45m", datetime(2026, 11, 28, 11, 15, tzinfo=UTC)),
        ("2h", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
        ("7d", datetime(2026, 11, 21, 12, 0, tzinfo=UTC)),
        ("2026-11-01T08:00:00", datetime(2026, 11, 1, 8, 0, tzinfo=UTC)),
        ("2026-11-01T08:00:00+02:00", datetime(2026, 11, 1, 6, 0, tzinfo=UTC)),
    ],
    ids=["seconds", "minutes", "hours", "days", "naive-iso-is-utc", "iso-with-offset"],
)
def test_since_accepts_durations_ago_and_iso_times(raw: str, expected: datetime) -> None:
    """Relative durations count back from now; a naive ISO time is UTC."""
    assert parse_since(raw, now=NOW) == expected


def test_replay_ids_with_a_filter_prints_the_replay_usage_not_the_top_level_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``poison replay ID --channel sms``: the error comes with ``poison replay``'s own usage line."""
    with pytest.raises(SystemExit) as exited:
        main(["poison", "replay", "d-1", "--channel", "sms"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: alert-worker poison replay") and "go with --all" in err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from alert_worker import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"alert-worker {__version__}"


def test_tables_align_every_column_to_its_widest_cell() -> None:
    """``poison list`` and ``suppression list``: a long id or recipient never shifts the next column."""
    from alert_worker.console import table

    lines = table(
        ("ID", "TRIES", "ERROR"),
        [("a-very-long-delivery-id-" * 2, "3", "smtp-550"), ("d", "12", "x")],
        right=frozenset({1}),
    )
    assert len({line.index("ERROR" if i == 0 else line.split()[-1]) for i, line in enumerate(lines)}) == 1
    assert lines[2].startswith("d ") and lines[2].split()[1] == "12"
