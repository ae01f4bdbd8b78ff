"""Issue 9 items 2, 7, 10 and 12 through the CLI: clear one-line errors, never a traceback, and an id
whenever a row was committed (docs/contract.md §6.3)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
import redis

from alert_worker.health import RQ_WORKER_COMMAND
from alert_worker.settings import Settings
from alert_worker.sweep import sweep_once
from tests.support.cli import InProcessCli

pytestmark = pytest.mark.integration

NOT_UTF8 = b"id-\xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of a non-UTF-8 argv


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], worker_env: dict[str, str]
) -> Iterator[InProcessCli]:
    yield InProcessCli(monkeypatch, capsys, worker_env)


def _one_clear_line(text: str) -> str:
    assert "Traceback" not in text
    [line] = text.strip().splitlines()
    return line


def test_send_prints_the_id_and_exits_0_when_the_row_is_committed_but_redis_is_down(
    cli: InProcessCli, database_url: str
) -> None:
    """Redis unreachable: admitted (depth unknown), recorded, a warning on stderr, the id on stdout."""
    result = cli(
        "send", "--channel", "email", "--to", "ops@example.com", "--id", "kept-1", REDIS_URL="redis://127.0.0.1:1/0"
    )
    assert result.code == 0, result.err
    assert result.out.strip().splitlines()[-1] == "kept-1"
    assert "the sweep will enqueue it" in result.err
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT status FROM alert_deliveries WHERE id = 'kept-1'").fetchall() == [("pending",)]


def test_send_refuses_an_empty_id(cli: InProcessCli, database_url: str) -> None:
    """``--id ''`` is a usage error (exit 2), not a request for a new UUID; nothing is recorded."""
    result = cli("send", "--channel", "email", "--to", "ops@example.com", "--id", "")
    assert result.code == 2 and "must not be empty" in _one_clear_line(result.err)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM alert_deliveries").fetchone() == (0,)


@pytest.mark.parametrize(
    "args",
    [("status", NOT_UTF8), ("poison", "replay", NOT_UTF8), ("poison", "resolve", NOT_UTF8)],
    ids=["status", "poison-replay", "poison-resolve"],
)
def test_a_non_utf8_argument_is_one_clear_usage_error(cli: InProcessCli, args: tuple[str, ...]) -> None:
    """Exit 2 and one line on stderr naming the argument; nothing reaches Postgres."""
    result = cli(*args)
    assert result.code == 2
    assert "not valid UTF-8" in _one_clear_line(result.err)


def test_poison_list_since_before_year_one_is_a_usage_error(cli: InProcessCli) -> None:
    """``--since 99999999d`` overflows a datetime: argparse's usage error, no traceback."""
    result = cli("poison", "list", "--since", "99999999d")
    assert result.code == 2 and "Traceback" not in result.err
    assert "reaches before year 1" in result.err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["check", "sweep"])
def test_a_redis_url_with_a_foreign_scheme_is_named_not_a_traceback(cli: InProcessCli, command: str) -> None:
    """REDIS_URL=foo://bar: exit 1, and the message names REDIS_URL and what it must start with."""
    result = cli(command, REDIS_URL="foo://bar")
    assert result.code == 1
    text = result.out + result.err
    assert "Traceback" not in text and "REDIS_URL must start with redis://" in text


def test_run_with_a_foreign_redis_scheme_prints_its_json_start_up_line(cli: InProcessCli) -> None:
    """The worker's one JSON line says why it did not start."""
    result = cli("run", REDIS_URL="foo://bar")
    assert result.code == 1
    event = json.loads(_one_clear_line(result.out))
    assert event["event"] == "configuration_invalid" and "REDIS_URL" in event["error"]


@pytest.mark.parametrize("grace", ["0", "-1"], ids=["zero", "negative"])
def test_a_sweep_grace_below_one_second_is_refused_at_start_up(cli: InProcessCli, grace: str) -> None:
    """With no grace a pass would re-take the rows it just stamped: refused, with the reason."""
    result = cli("run", ALERT_SWEEP_GRACE_SECONDS=grace)
    assert result.code == 1
    event = json.loads(_one_clear_line(result.out))
    assert "ALERT_SWEEP_GRACE_SECONDS must be >= 1" in event["error"]


@pytest.mark.parametrize(("send", "job"), [("5", "5"), ("30", "10")], ids=["equal", "above"])
def test_a_send_timeout_not_below_the_job_timeout_is_refused_at_start_up(
    cli: InProcessCli, send: str, job: str
) -> None:
    """A send is one deadline inside its job (§7.1): otherwise the job timeout cuts sends off."""
    result = cli("run", ALERT_SEND_TIMEOUT_SECONDS=send, ALERT_JOB_TIMEOUT_SECONDS=job)
    assert result.code == 1
    event = json.loads(_one_clear_line(result.out))
    assert event["event"] == "configuration_invalid"
    assert "ALERT_SEND_TIMEOUT_SECONDS must be below ALERT_JOB_TIMEOUT_SECONDS" in event["error"]


@pytest.mark.timeout(60)
def test_a_sweep_pass_ends_even_with_no_grace_over_more_than_one_batch(
    worker_env: dict[str, str], database_url: str, redis_client: redis.Redis
) -> None:
    """Five overdue rows in batches of two, grace 0: each row is enqueued once and the pass ends."""
    from alert_worker.producer import send_alert
    from alert_worker.resources import short_lived
    from alert_worker.wiring import collaborators

    settings = Settings.from_env(worker_env)
    for n in range(5):
        send_alert("email", "ops@example.com", "s", "b", delivery_id=f"ov-{n}", settings=settings)
    redis_client.flushdb()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alert_deliveries SET updated_at = now() - interval '1 hour'")
    with short_lived(settings) as conns:
        parts = collaborators(settings, pool=conns.database, client=conns.redis)
        report = sweep_once(
            store=parts.store,
            enqueuer=parts.enqueuer,
            queue_depth=parts.queue_depth,
            poison_gauge=parts.poison_gauge,
            grace_seconds=0,
            batch_size=2,
        )
    assert report.requeued == 5
    assert redis_client.llen("rq:queue:alerts") == 5


def test_check_and_start_up_agree_that_an_smtp_user_is_no_sender_address(cli: InProcessCli) -> None:
    """SMTP_USER=apikey, ALERTS_FROM_EMAIL unset: every e-mail would be poisoned, so check says disabled."""
    env = {"SMTP_USER": "apikey", "SMTP_PASSWORD": "pw", "ALERTS_FROM_EMAIL": ""}
    result = cli("check", "--json", **env)
    assert json.loads(result.out)["channels"]["email"] == "disabled (missing ALERTS_FROM_EMAIL)"
    started = cli("run", "--burst", **env)
    disabled = [json.loads(line) for line in started.out.splitlines() if '"channel_disabled"' in line]
    assert [e["missing"] for e in disabled if e["channel"] == "email"] == [["ALERTS_FROM_EMAIL"]]


def test_every_rq_worker_command_the_package_prints_disables_job_description_logging(
    cli: InProcessCli, redis_client: redis.Redis
) -> None:
    """`check` without a scheduler tells operators how to run plain RQ: with --disable-job-desc-logging."""
    result = cli("check")
    advice = [line for line in result.out.splitlines() if "rq worker" in line]
    assert advice and all(RQ_WORKER_COMMAND in line for line in advice)
    assert "--disable-job-desc-logging" in RQ_WORKER_COMMAND
    assert "--disable-job-desc-logging" in cli("check", "--help").out


def test_check_reports_a_missing_schema_even_while_redis_is_down(cli: InProcessCli, database_url: str) -> None:
    """Each server's details are checked on their own: one being down hides nothing about the other."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE alert_deliveries CASCADE")
    result = cli("check", "--json", REDIS_URL="redis://127.0.0.1:1/0")
    report = json.loads(result.out)
    assert result.code == 1 and report["database"] == "ok" and report["redis"].startswith("unreachable")
    assert any(w.startswith("schema missing") for w in report["warnings"])


@pytest.mark.parametrize(
    "args",
    [("status", "x"), ("poison", "list"), ("poison", "replay", "x"), ("sweep",)],
    ids=["status", "poison-list", "poison-replay", "sweep"],
)
def test_an_operator_command_with_postgres_down_fails_at_once_with_the_reason(
    cli: InProcessCli, args: tuple[str, ...]
) -> None:
    """One line naming the refused connection, the DSN's password masked; no pool timeout to wait for."""
    result = cli(*args, DATABASE_URL="postgresql://postgres:hunter2@127.0.0.1:1/x", ALERT_SEND_TIMEOUT_SECONDS="30")
    assert result.code == 1
    line = _one_clear_line(result.err)
    assert "database unreachable" in line and "Connection refused" in line and "hunter2" not in line
