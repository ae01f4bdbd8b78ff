"""Every ``alert-worker`` operator command against the real Postgres and Redis."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis
from rq import Queue, SimpleWorker

from tests.support.cli import InProcessCli, preserved_logging
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], worker_env: dict[str, str]
) -> InProcessCli:
    return InProcessCli(monkeypatch, capsys, worker_env)


@pytest.fixture
def run_jobs(
    monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str], redis_client: redis.Redis
) -> Iterator[Callable[[], None]]:
    """Work the ``alerts`` queue once in process (a burst ``SimpleWorker``), as a worker would."""

    def run() -> None:
        with monkeypatch.context() as patch, preserved_logging():
            for name, value in worker_env.items():
                patch.setenv(name, value)
            SimpleWorker([Queue("alerts", connection=redis_client)], connection=redis_client).work(burst=True)

    yield run


def _sql(database_url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _status(database_url: str, delivery_id: str) -> tuple[object, ...]:
    [row] = _sql(
        database_url, "SELECT status, attempts, payload IS NOT NULL FROM alert_deliveries WHERE id = %s", delivery_id
    )
    return row


def _queued(redis_client: redis.Redis) -> list[str]:
    return Queue("alerts", connection=redis_client).get_job_ids()


def _poisoned(
    cli: InProcessCli, database_url: str, delivery_id: str, *, channel: str = "email", to: str = "ops@example.com"
) -> None:
    """A delivery parked in the poison queue as the executor leaves it (payload kept)."""
    assert cli("send", "--channel", channel, "--to", to, "--subject", "s", "--body", "b", "--id", delivery_id).code == 0
    _sql(
        database_url,
        "UPDATE alert_deliveries SET status = 'poison', attempts = 5, poison_at = now(), "
        "error_message = 'smtp 550: mailbox unavailable' WHERE id = %s",
        delivery_id,
    )


# -- migrate ----------------------------------------------------------------------------------------
def test_migrate_is_idempotent(cli: InProcessCli) -> None:
    """Running migrate twice succeeds both times."""
    assert [cli("migrate").code, cli("migrate").code] == [0, 0]
    assert cli("migrate").last_line == "migrated"


# -- send -------------------------------------------------------------------------------------------
def test_send_records_a_pending_row_enqueues_one_job_and_prints_the_id_last(
    cli: InProcessCli, database_url: str, redis_client: redis.Redis
) -> None:
    """The id is the last stdout line; the row is pending; one job with a neutral description."""
    result = cli(
        "send",
        "--channel",
        "email",
        "--to",
        "ops@example.com",
        "--subject",
        "Disk",
        "--body",
        "full",
        "--id",
        "send-1",
        "--alert-id",
        "A-7",
    )
    assert result.code == 0 and result.last_line == "send-1"
    assert _status(database_url, "send-1") == ("pending", 0, True)
    [job_id] = _queued(redis_client)
    job = Queue("alerts", connection=redis_client).fetch_job(job_id)
    assert job is not None and job.description == "alert delivery send-1"
    assert redis_client.get("alert:queue:depth") == b"1"


def test_send_without_an_id_prints_a_new_uuid(cli: InProcessCli, database_url: str) -> None:
    """No --id: a UUID is generated and printed."""
    result = cli("send", "--channel", "slack", "--to", "default", "--body", "hello")
    assert result.code == 0 and len(result.last_line) == 36
    assert _status(database_url, result.last_line)[0] == "pending"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (["--id", "dup-1"], ["--id", "dup-1"]),
        (["--id", "dup-1", "--dedup-key", "k-1"], ["--id", "other", "--dedup-key", "k-1"]),
    ],
    ids=["same-id", "same-dedup-key"],
)
def test_send_with_an_existing_id_or_dedup_key_creates_and_enqueues_nothing(
    cli: InProcessCli, redis_client: redis.Redis, database_url: str, first: list[str], second: list[str]
) -> None:
    """The second send prints the first delivery's id and enqueues nothing."""
    base = ["send", "--channel", "email", "--to", "ops@example.com", "--body", "b"]
    assert cli(*base, *first).last_line == "dup-1"
    result = cli(*base, *second)
    assert result.code == 0 and result.last_line == "dup-1"
    assert "already exists" in result.err
    assert len(_queued(redis_client)) == 1
    assert _sql(database_url, "SELECT count(*) FROM alert_deliveries") == [(1,)]


def test_send_refuses_over_the_max_queue_depth_until_it_falls_below_the_resume_mark(
    cli: InProcessCli, redis_client: redis.Redis
) -> None:
    """Max 10: refused at 11, still refused at 9 (resume below 9), accepted at 8; nothing created meanwhile."""
    base = ["send", "--channel", "email", "--to", "ops@example.com", "--body", "b"]
    cli.env["ALERT_MAX_QUEUE_DEPTH"] = "10"
    verdicts = []
    for depth in (10, 11, 10, 9, 8):
        redis_client.set("alert:queue:depth", depth)
        result = cli(*base)
        verdicts.append(result.code)
        if result.code == 1:
            assert "ALERT_MAX_QUEUE_DEPTH=10" in result.err and "below 9" in result.err
    assert verdicts == [0, 1, 1, 1, 0]
    assert len(_queued(redis_client)) == 2


def test_send_while_refusing_still_answers_an_existing_id(cli: InProcessCli, redis_client: redis.Redis) -> None:
    """A duplicate creates nothing, so it is answered even while the queue is full."""
    base = ["send", "--channel", "email", "--to", "ops@example.com", "--body", "b", "--id", "known"]
    assert cli(*base).code == 0
    redis_client.set("alert:queue:depth", 50_000)
    result = cli(*base)
    assert (result.code, result.last_line) == (0, "known")


def test_send_with_an_impossible_delivery_id_is_a_usage_error(cli: InProcessCli, redis_client: redis.Redis) -> None:
    """A 300-character id cannot be a delivery: exit 2, nothing enqueued."""
    result = cli("send", "--channel", "email", "--to", "ops@example.com", "--body", "b", "--id", "x" * 300)
    assert result.code == 2 and _queued(redis_client) == []


# -- status -----------------------------------------------------------------------------------------
def test_status_shows_state_attempts_error_and_the_masked_recipient_never_the_payload(
    cli: InProcessCli, database_url: str
) -> None:
    """Human and JSON views carry the same fields; neither shows the address, subject or body."""
    assert (
        cli(
            "send",
            "--channel",
            "email",
            "--to",
            "oncall@example.com",
            "--subject",
            "SECRET-SUBJ",
            "--body",
            "SECRET-BODY",
            "--id",
            "st-1",
        ).code
        == 0
    )
    _sql(
        database_url,
        "UPDATE alert_deliveries SET attempts = 2, error_message = 'smtp 451', "
        "next_attempt_at = now() + interval '30 seconds' WHERE id = 'st-1'",
    )
    human = cli("status", "st-1")
    as_json = cli("status", "st-1", "--json")
    assert human.code == 0 and as_json.code == 0
    view = json.loads(as_json.out)
    assert view["status"] == "pending" and view["attempts"] == 2 and view["last_error"] == "smtp 451"
    assert view["recipient"] == "o***@example.com" and view["next_attempt_at"]
    assert "status:" in human.out and "o***@example.com" in human.out
    for output in (human.out, as_json.out):
        assert "oncall@example.com" not in output and "SECRET" not in output


def test_status_of_an_unknown_id_exits_1(cli: InProcessCli) -> None:
    """A missing delivery is a failure with a clear message."""
    result = cli("status", "nope")
    assert result.code == 1 and "no delivery" in result.err


# -- poison list -------------------------------------------------------------------------------------
def test_poison_list_filters_by_channel_and_since_and_limits(cli: InProcessCli, database_url: str) -> None:
    """Newest first; --channel, --since and --limit narrow the list."""
    _poisoned(cli, database_url, "p-old")
    _poisoned(cli, database_url, "p-new")
    _poisoned(cli, database_url, "p-sms", channel="sms", to="+15551234567")
    _sql(database_url, "UPDATE alert_deliveries SET poison_at = now() - interval '3 hours' WHERE id = 'p-old'")

    def ids(*args: str) -> list[str]:
        result = cli("poison", "list", "--json", *args)
        assert result.code == 0
        return [row["id"] for row in json.loads(result.out)]

    assert set(ids()) == {"p-old", "p-new", "p-sms"} and ids()[-1] == "p-old"
    assert set(ids("--channel", "email")) == {"p-old", "p-new"}
    assert "p-old" not in ids("--since", "1h")
    assert len(ids("--limit", "1")) == 1
    human = cli("poison", "list")
    assert "p-sms" in human.out and "***4567" in human.out and "+15551234567" not in human.out


def test_poison_list_says_when_the_queue_is_empty(cli: InProcessCli) -> None:
    """An empty queue is a plain sentence, exit 0."""
    result = cli("poison", "list")
    assert result.code == 0 and "empty" in result.out


# -- poison replay -----------------------------------------------------------------------------------
def test_replaying_twice_sends_once(
    cli: InProcessCli,
    smtp_sink: SmtpSink,
    database_url: str,
    redis_client: redis.Redis,
    run_jobs: Callable[[], None],
) -> None:
    """A real permanent failure parks the delivery; two replays enqueue one job; one message is sent."""
    smtp_sink.rcpt_replies.append("554 5.7.1 relay access denied")  # not 5.1.x: that would suppress (§6.2)
    assert cli("send", "--channel", "email", "--to", "ops@example.com", "--body", "b", "--id", "rp-1").code == 0
    run_jobs()
    assert _status(database_url, "rp-1") == ("poison", 1, True)
    assert redis_client.get("alert:poison:count") == b"1"

    first = cli("poison", "replay", "rp-1")
    second = cli("poison", "replay", "rp-1")
    assert first.code == 0 and "replayed rp-1" in first.out
    assert second.code == 1 and "not in the poison queue (status pending)" in second.err
    assert _status(database_url, "rp-1") == ("pending", 0, True)
    assert len(_queued(redis_client)) == 1
    assert redis_client.get("alert:poison:count") == b"0"

    run_jobs()
    assert _status(database_url, "rp-1") == ("delivered", 1, False)
    assert len(smtp_sink.messages_to("ops@example.com")) == 1


def test_replay_dry_run_changes_nothing(cli: InProcessCli, database_url: str, redis_client: redis.Redis) -> None:
    """--dry-run names what would be replayed; the rows, the gauge and the queue are untouched."""
    _poisoned(cli, database_url, "dry-1")
    _queued_before = _queued(redis_client)
    redis_client.set("alert:poison:count", 1)
    result = cli("poison", "replay", "--all", "--dry-run")
    assert result.code == 0 and "would replay dry-1" in result.out
    assert _status(database_url, "dry-1") == ("poison", 5, True)
    assert _queued(redis_client) == _queued_before
    assert redis_client.get("alert:poison:count") == b"1"


def test_replay_all_honours_channel_and_since(cli: InProcessCli, database_url: str) -> None:
    """--all --channel email --since 1h takes only recent e-mail poison."""
    _poisoned(cli, database_url, "all-email")
    _poisoned(cli, database_url, "all-old")
    _poisoned(cli, database_url, "all-sms", channel="sms", to="+15551234567")
    _sql(database_url, "UPDATE alert_deliveries SET poison_at = now() - interval '2 days' WHERE id = 'all-old'")
    result = cli("poison", "replay", "--all", "--channel", "email", "--since", "1h", "--json")
    assert result.code == 0
    assert json.loads(result.out)["replayed"] == ["all-email"]
    assert [_status(database_url, i)[0] for i in ("all-email", "all-old", "all-sms")] == ["pending", "poison", "poison"]


def test_replay_explains_ids_it_cannot_replay(cli: InProcessCli, database_url: str) -> None:
    """Unknown ids and poison rows without a payload are reported and make the exit code 1."""
    _poisoned(cli, database_url, "nopayload")
    _sql(database_url, "UPDATE alert_deliveries SET payload = NULL WHERE id = 'nopayload'")
    result = cli("poison", "replay", "nopayload", "ghost")
    assert result.code == 1
    assert "ghost: no such delivery" in result.err and "nopayload: no stored payload" in result.err


# -- poison resolve ----------------------------------------------------------------------------------
def test_resolve_fails_the_delivery_erases_its_payload_and_keeps_a_sanitized_note(
    cli: InProcessCli, database_url: str, redis_client: redis.Redis
) -> None:
    """Resolved: status failed, payload gone, gauge down; a second resolve is reported as skipped."""
    _poisoned(cli, database_url, "rs-1")
    redis_client.set("alert:poison:count", 1)
    result = cli("poison", "resolve", "rs-1", "--note", "bounced; asked bob@example.com")
    assert result.code == 0 and "resolved rs-1" in result.out
    assert _status(database_url, "rs-1") == ("failed", 5, False)
    [(note,)] = _sql(database_url, "SELECT error_message FROM alert_deliveries WHERE id = 'rs-1'")
    assert note == "bounced; asked <email>"
    assert redis_client.get("alert:poison:count") == b"0"
    again = cli("poison", "resolve", "rs-1")
    assert again.code == 1 and "not in the poison queue (status failed)" in again.err


# -- sweep ------------------------------------------------------------------------------------------
def test_sweep_by_hand_reports_what_it_did(cli: InProcessCli, database_url: str, redis_client: redis.Redis) -> None:
    """One pass: the lost job is re-enqueued and the gauges are reset from Postgres."""
    assert cli("send", "--channel", "email", "--to", "ops@example.com", "--body", "b", "--id", "sw-1").code == 0
    redis_client.flushdb()
    _sql(database_url, "UPDATE alert_deliveries SET updated_at = now() - interval '1 hour' WHERE id = 'sw-1'")
    result = cli("sweep", "--json")
    assert result.code == 0
    assert json.loads(result.out) == {"swept": True, "requeued": 1, "queue_depth": 1, "poison": 0}
    assert len(_queued(redis_client)) == 1


def test_sweep_while_another_sweeper_holds_the_lock_does_nothing(cli: InProcessCli, redis_client: redis.Redis) -> None:
    """The cluster-wide lock is respected; exit 0 and a plain explanation."""
    redis_client.set("alert:sweep:lock", "someone-else", ex=60)
    result = cli("sweep")
    assert result.code == 0 and "another sweeper holds the lock" in result.out


# -- check ------------------------------------------------------------------------------------------
def test_check_passes_when_database_and_redis_answer_and_names_the_channels(cli: InProcessCli) -> None:
    """Exit 0; e-mail configured, SMS disabled naming its variables; no scheduler is a warning only."""
    result = cli("check", "--json")
    assert result.code == 0
    report = json.loads(result.out)
    assert report["ok"] is True and report["database"] == "ok" and report["redis"] == "ok"
    assert report["channels"]["email"] == "configured"
    assert "TWILIO_ACCOUNT_SID" in report["channels"]["sms"]
    assert report["scheduler"] == {"alerts": False}
    assert any("no RQ scheduler" in w for w in report["warnings"])
    assert report["redis_maxmemory_policy"]


def test_check_sees_a_scheduler_holding_its_lock(cli: InProcessCli, redis_client: redis.Redis) -> None:
    """RQ's scheduler lock key for the queue counts as a scheduler seen."""
    redis_client.set("rq:scheduler-lock:alerts", "scheduler-1", ex=60)
    human = cli("check")
    assert human.code == 0 and "scheduler for alerts: seen" in human.out and human.last_line == "ok"


@pytest.mark.parametrize(
    "broken",
    [
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"},
        {"REDIS_URL": "redis://127.0.0.1:1/0"},
        {"REDIS_URL": ""},
    ],
    ids=["postgres-unreachable", "redis-unreachable", "redis-unset"],
)
def test_check_fails_when_the_database_or_redis_does_not_answer(cli: InProcessCli, broken: dict[str, str]) -> None:
    """Exit 1 and the failing part named."""
    result = cli("check", **broken)
    assert result.code == 1 and result.last_line == "FAILED"
    assert "unreachable" in result.out or "not configured" in result.out


def test_a_bad_setting_exits_1_with_one_json_log_line(cli: InProcessCli) -> None:
    """ConfigurationError: one JSON line on stderr naming the variable."""
    result = cli("status", "x", ALERT_MAX_ATTEMPTS="many")
    assert result.code == 1
    [line] = result.err.strip().splitlines()
    event = json.loads(line)
    assert event["event"] == "configuration_invalid" and "ALERT_MAX_ATTEMPTS" in event["error"]
