"""Issue 20 through the CLI against the real Postgres and Redis: degraded modes say what they know, cooldowns
as a command, ``send`` refuses what the job would poison, and the tables read as tables."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
import redis

from alert_worker.cooldown import Cooldowns, destination_hash, mask_destination
from tests.support.cli import InProcessCli

pytestmark = pytest.mark.integration

CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
CLOSED_POSTGRES = "postgresql://postgres@127.0.0.1:1/postgres"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/SECRETPATH"


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], worker_env: dict[str, str]
) -> Iterator[InProcessCli]:
    yield InProcessCli(monkeypatch, capsys, worker_env)


def _rows(database_url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _one_line(text: str) -> str:
    assert "Traceback" not in text
    [line] = text.strip().splitlines()
    return line


# -- 4: status with one side down ----------------------------------------------------------------------
def test_status_with_redis_down_shows_what_postgres_knows_and_marks_the_redis_parts_unknown(
    cli: InProcessCli, database_url: str
) -> None:
    """Exit 1 (a part is unknown), the counts from Postgres, and no zero passed off as a worker count."""
    assert cli("send", "--channel", "email", "--to", "ops@example.com", "--body", "b", "--id", "d-1").code == 0
    text = cli("status", REDIS_URL=CLOSED_REDIS)
    assert text.code == 1, text.err
    assert text.out.startswith("UNKNOWN: redis did not answer (redis unreachable: ConnectionError")
    assert "workers: unknown" in text.out and "scheduler: unknown" in text.out and "cooldowns: unknown" in text.out
    [pending] = [line for line in text.out.splitlines() if line.strip().startswith("pending")]
    assert pending.split()[1:] == ["1", "0", "0", "1"]
    shown = json.loads(cli("status", "--json", REDIS_URL=CLOSED_REDIS).out)
    assert shown["deliveries"]["pending"]["email"] == 1 and shown["workers"] is None and "redis" in shown["unknown"]


def test_status_with_postgres_down_shows_what_redis_knows_and_marks_the_postgres_parts_unknown(
    cli: InProcessCli, redis_client: redis.Redis
) -> None:
    redis_client.hset("alert:worker:w-1", mapping={"threads": 4, "in_flight": 1, "started_at": "1"})
    redis_client.set("alert:worker:w-1:alive", 1, ex=30)
    result = cli("status", "--json", DATABASE_URL=CLOSED_POSTGRES)
    assert result.code == 1, result.err
    shown = json.loads(result.out)
    assert (
        shown["deliveries"] is None
        and shown["poison"] is None
        and "database unreachable" in shown["unknown"]["postgres"]
    )
    assert shown["workers"] == [{"name": "w-1", "threads": 4, "in_flight": 1}]
    assert "postgres did not answer" in result.err


def test_status_with_both_down_is_one_line_and_exit_1(cli: InProcessCli) -> None:
    result = cli("status", REDIS_URL=CLOSED_REDIS, DATABASE_URL=CLOSED_POSTGRES)
    assert result.code == 1 and result.out == ""
    assert "database unreachable" in _one_line(result.err) and "redis unreachable" in result.err


# -- 5: replay with Redis down -------------------------------------------------------------------------
def test_replay_with_redis_down_says_the_rows_are_pending_for_the_sweep_and_exits_0(
    cli: InProcessCli, database_url: str
) -> None:
    """Like ``send``: the rows moved back to pending is what a replay promises; the sweep enqueues them."""
    assert cli("send", "--channel", "email", "--to", "ops@example.com", "--body", "b", "--id", "p-1").code == 0
    _rows(
        database_url, "UPDATE alert_deliveries SET status = 'poison', attempts = 5, poison_at = now() WHERE id = 'p-1'"
    )
    result = cli("poison", "replay", "p-1", REDIS_URL=CLOSED_REDIS)
    assert result.code == 0, result.err
    assert result.out.strip().splitlines() == [
        "replayed p-1 (back to pending, not enqueued: the sweep enqueues it)",
        "replayed 1 deliveries",
    ]
    assert "the sweep will enqueue them" in result.err.strip().splitlines()[-1]  # after the gauges' log lines
    assert _rows(database_url, "SELECT status, attempts FROM alert_deliveries WHERE id = 'p-1'") == [("pending", 0)]


# -- 6: suppression commands with Postgres down --------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ("suppression", "list"),
        ("suppression", "add", "--channel", "email", "--to", "ops@example.com", "--reason", "r"),
        ("suppression", "remove", "--channel", "email", "--to", "ops@example.com"),
    ],
    ids=["list", "add", "remove"],
)
def test_suppression_commands_with_postgres_down_fail_with_one_line_like_every_other(
    cli: InProcessCli, args: tuple[str, ...]
) -> None:
    """One direct connection first: ``database unreachable: …`` and exit 1, not the pool's retries."""
    result = cli(*args, DATABASE_URL=CLOSED_POSTGRES)
    assert result.code == 1
    assert _one_line(result.err).startswith("alert-worker: database unreachable: ")


# -- 12: cooldowns as a command ------------------------------------------------------------------------
def test_cooldown_list_and_clear_honour_the_redis_db_and_key_prefix_and_mask_destinations(
    cli: InProcessCli, redis_client: redis.Redis
) -> None:
    """A cooldown started the way the worker starts one, under a custom prefix: listed masked, cleared by
    ``--to`` (hashed as the worker hashes it), ``--hash`` or ``--all``."""
    cooldowns = Cooldowns(client=redis_client, key_prefix="blue:")
    slack = destination_hash("test-secret", "slack", WEBHOOK)
    cooldowns.start("slack", slack, 120.0, shown=mask_destination("slack", WEBHOOK))
    cooldowns.start("slack", "0" * 16, 60.0, shown="-")
    cooldowns.start("email", "1" * 16, 60.0, shown=mask_destination("email", "smtp.example.com:587"))
    env = {"ALERT_REDIS_KEY_PREFIX": "blue:"}

    listed = cli("cooldown", "list", **env)
    assert listed.code == 0 and "SECRETPATH" not in listed.out
    header, *rows = listed.out.strip().splitlines()
    assert header.split() == ["CHANNEL", "HASH", "DESTINATION", "SECONDS", "LEFT"]
    assert rows[0].split()[:3] == ["slack", slack, "hooks.slack.com/***"]
    as_json = json.loads(cli("cooldown", "list", "--json", "--channel", "email", **env).out)
    assert [(c["channel"], c["destination"]) for c in as_json] == [("email", "smtp.example.com:587")]
    assert json.loads(cli("cooldown", "list", "--json").out) == []  # the default prefix has none

    cleared = cli("cooldown", "clear", "--channel", "slack", "--to", WEBHOOK + "?x=1", **env)
    assert (cleared.code, cleared.out.strip()) == (0, f"cleared: slack {slack}")
    again = cli("cooldown", "clear", "--channel", "slack", "--hash", slack, **env)
    assert (again.code, again.out.strip()) == (0, f"not cooling: slack {slack}")
    assert cli("cooldown", "clear", "--channel", "slack", "--all", **env).out.strip() == "cleared 1 slack cooldowns"
    assert [c.channel for c in cooldowns.active()] == ["email"]


# -- 13: send checks the recipient's shape before it records anything -------------------------------
@pytest.mark.parametrize(
    ("channel", "to", "reason"),
    [
        ("sms", "5551234", "expected an E.164 phone number"),
        ("email", "not-an-address", "not a valid e-mail address"),
        ("email", "Ops Team <ops@example.com>", "display names are not accepted"),
        ("slack", "https://hooks.example.com/services/x", "not in SLACK_WEBHOOK_HOSTS"),
    ],
    ids=["sms-not-e164", "email-not-an-address", "email-display-name", "slack-host-not-allowed"],
)
def test_send_refuses_a_recipient_the_job_would_poison_with_exit_2_and_records_nothing(
    cli: InProcessCli, database_url: str, redis_client: redis.Redis, channel: str, to: str, reason: str
) -> None:
    result = cli("send", "--channel", channel, "--to", to, "--body", "b")
    assert result.code == 2
    line = _one_line(result.err)
    assert reason in line and to not in line
    assert _rows(database_url, "SELECT count(*) FROM alert_deliveries") == [(0,)]
    assert redis_client.keys("rq:queue:*") == []


# -- 18: the tables an operator reads -------------------------------------------------------------------
def test_suppression_list_has_a_header_row_and_aligned_columns(cli: InProcessCli) -> None:
    for to in ("ops@example.com", "a-much-longer-recipient-name@example.com"):
        assert cli("suppression", "add", "--channel", "email", "--to", to, "--reason", "left").code == 0
    header, *rows = cli("suppression", "list").out.strip().splitlines()
    assert header.split() == ["CHANNEL", "HASH", "RECIPIENT", "CREATED", "AT", "SOURCE", "REASON"]
    assert len(rows) == 2
    assert {row.index("operator") for row in rows} == {header.index("SOURCE")}


def test_poison_list_columns_line_up_whatever_the_id_and_recipient_lengths(
    cli: InProcessCli, database_url: str
) -> None:
    for delivery_id, to in (("p", "ops@example.com"), ("p-" + "x" * 60, "someone.with.a.long.name@example.com")):
        assert cli("send", "--channel", "email", "--to", to, "--body", "b", "--id", delivery_id).code == 0
    _rows(database_url, "UPDATE alert_deliveries SET status = 'poison', poison_at = now(), error_message = 'smtp 550'")
    header, *rows = cli("poison", "list").out.strip().splitlines()
    assert len(rows) == 2
    for column in ("CHANNEL", "RECIPIENT", "POISONED AT", "ERROR"):
        starts = {row[header.index(column) - 2 : header.index(column)] for row in rows}
        assert starts == {"  "}, column  # every row has the column gap exactly where the header has it
