"""Issue 17 points 12 and 13 through the CLI, against the real Postgres and Redis (docs/contract.md §7.6):
non-finite settings refused in one JSON line; no piece of a DSN password in any output; control characters
from a delivery escaped in ``status``, ``poison list`` and ``suppression list``; an undecodable argument named,
never echoed."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.cli import InProcessCli, run_cli, subprocess_env
from tests.support.processes import REPO, free_port

pytestmark = pytest.mark.integration

# An id a producer could send: erase the line, paint a fake row, retitle the terminal, ring the bell.
EVIL_ID = "x\r\x1b[2K\x1b[32mresolved-by-oncall\x1b[0m\x1b]0;pwned\x07\x7f\x9b"
EVIL_ERROR = "smtp 550\x1b[2J\r\nfake second line"
RAW_CONTROLS = ("\x1b", "\r", "\x07", "\x7f", "\x9b")


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], worker_env: dict[str, str]
) -> Iterator[InProcessCli]:
    yield InProcessCli(monkeypatch, capsys, worker_env)


def _sql(database_url: str, sql: str, *params: object) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def _no_raw_control(text: str) -> None:
    assert not [ch for ch in RAW_CONTROLS if ch in text], repr(text)


# -- point 12: numeric settings are finite ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALERT_SEND_TIMEOUT_SECONDS", "inf"),
        ("ALERT_RETRY_DELAYS", "inf"),
        ("ALERT_RETRY_DELAYS", "5,nan"),
        ("ALERT_COOLDOWN_SECONDS", "inf"),
        ("ALERT_MAX_RETRY_DELAY", "nan"),
    ],
    ids=["send-timeout-inf", "retry-delays-inf", "retry-delays-nan", "cooldown-inf", "max-retry-delay-nan"],
)
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_non_finite_setting_stops_start_up_with_one_json_line_naming_it(
    cli: InProcessCli, command: str, name: str, value: str
) -> None:
    """Exit 1, one JSON line (the worker's on stdout, a command's on stderr), no traceback."""
    result = cli(command, **{name: value})
    assert result.code == 1
    text = result.out if command == "run" else result.err
    assert "Traceback" not in result.out + result.err
    [line] = text.strip().splitlines()
    event = json.loads(line)
    assert event["event"] == "configuration_invalid" and name in event["error"]


def test_retry_delays_inf_leaves_no_row_in_progress(worker_env: dict[str, str], database_url: str) -> None:
    """The f15b repro: a job run with ``ALERT_RETRY_DELAYS=inf`` whose send fails. Its settings are refused
    before it claims a row, so nothing waits ``in_progress`` for the stuck reclaim."""
    code = (
        "from alert_worker.entrypoint import execute_delivery_job\n"
        "execute_delivery_job('inf-1', 'email', 'ops@example.com', 's', 'b')\n"
    )
    env = subprocess_env({**worker_env, "ALERT_RETRY_DELAYS": "inf", "SMTP_PORT": str(free_port())})  # refused
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert "ALERT_RETRY_DELAYS" in done.stderr, done.stderr
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT status FROM alert_deliveries WHERE id = 'inf-1'").fetchall() == []


# -- point 13a: no piece of a password --------------------------------------------------------------------
REDIS_PASSWORDS = [
    ("redis://:s3cr#etpass@127.0.0.1:6379/0", ("s3cr", "etpass")),
    ("redis://user:Abc/def@127.0.0.1:6379/0", ("Abc", "def")),
    ("redis://:Pw?x=1@127.0.0.1:6379/0", ("Pw", "x=1")),
]


@pytest.mark.parametrize(("url", "pieces"), REDIS_PASSWORDS, ids=["hash", "slash", "question-mark"])
@pytest.mark.parametrize("command", [["run", "--burst"], ["check"], ["check", "--json"], ["sweep"]])
def test_no_piece_of_a_redis_password_with_an_unescaped_delimiter_is_printed(
    worker_env: dict[str, str], command: list[str], url: str, pieces: tuple[str, ...]
) -> None:
    """A real process, all of its output: refused by name (exit 1), no piece of the password anywhere."""
    done = run_cli(command, {**worker_env, "REDIS_URL": url}, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output
    assert "REDIS_URL" in output and "percent-encode" in output
    for piece in pieces:
        assert piece not in output


@pytest.mark.parametrize("password", ["pa#ss-h17", "pa?ss-h17"], ids=["hash", "question-mark"])
def test_a_postgres_password_libpq_reads_as_written_is_accepted_and_never_printed(
    database_url: str, redis_url: str, password: str
) -> None:
    """'#' and '?' need no escaping for libpq: ``check`` connects as a role with such a password, and its
    output holds no piece of it."""
    role = f"h17_{uuid.uuid4().hex[:10]}"
    _sql(database_url, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        after_at = database_url.split("://", 1)[1].rpartition("@")[2]  # host:port/db
        done = run_cli(
            ["check", "--json"], {"DATABASE_URL": f"postgresql://{role}:{password}@{after_at}", "REDIS_URL": redis_url}
        )
        assert json.loads(done.stdout)["database"] == "ok", done.stdout + done.stderr
        for piece in (password, "pa#", "pa?", "ss-h17"):
            assert piece not in done.stdout + done.stderr
    finally:
        _sql(database_url, f"DROP ROLE IF EXISTS {role}")


# -- point 13b: control characters from a delivery --------------------------------------------------------
@pytest.fixture
def evil_poisoned(cli: InProcessCli, database_url: str) -> str:
    """A poisoned delivery whose id and error hold terminal escapes (ids may hold any printable-or-not text)."""
    result = cli("send", "--channel", "email", "--to", "ops@example.com", "--id", EVIL_ID, "--body", "b")
    assert result.code == 0, result.err
    _sql(
        database_url,
        "UPDATE alert_deliveries SET status = 'poison', attempts = 5, poison_at = now(), error_message = %s "
        "WHERE id = %s",
        EVIL_ERROR,
        EVIL_ID,
    )
    return EVIL_ID


@pytest.mark.parametrize(
    "args",
    [("status", EVIL_ID), ("poison", "list")],
    ids=["status", "poison-list"],
)
def test_control_characters_from_a_delivery_print_escaped(
    cli: InProcessCli, evil_poisoned: str, args: tuple[str, ...]
) -> None:
    """ESC prints as the four characters ``\\x1b``; CR, BEL, DEL and C1 likewise; nothing reaches the terminal raw."""
    result = cli(*args)
    assert result.code == 0, result.err
    _no_raw_control(result.out + result.err)
    assert "x\\x0d\\x1b[2K\\x1b[32mresolved-by-oncall" in result.out
    assert "smtp 550\\x1b[2J\\x0d\\x0afake second line" in result.out


@pytest.mark.parametrize(
    "args",
    [("status", EVIL_ID, "--json"), ("poison", "list", "--json")],
    ids=["status", "poison-list"],
)
def test_json_output_escapes_every_control_character_and_keeps_the_value(
    cli: InProcessCli, evil_poisoned: str, args: tuple[str, ...]
) -> None:
    result = cli(*args)
    assert result.code == 0, result.err
    _no_raw_control(result.out)
    parsed = json.loads(result.out)
    row = parsed[0] if isinstance(parsed, list) else parsed
    assert row["id"] == EVIL_ID


def test_suppression_list_escapes_the_delivery_id_and_reason(cli: InProcessCli, database_url: str) -> None:
    """An entry a delivery added keeps that delivery's id: it prints escaped, table and JSON alike."""
    _sql(
        database_url,
        "INSERT INTO alert_suppressions (channel, recipient_hash, recipient, reason, source_delivery_id) "
        "VALUES ('email', 'h1', 'o***@example.com', %s, %s)",
        "550 5.1.1 \x1b[31mgone",
        EVIL_ID,
    )
    table = cli("suppression", "list")
    assert table.code == 0, table.err
    _no_raw_control(table.out)
    assert "x\\x0d\\x1b[2K" in table.out and "550 5.1.1 \\x1b[31mgone" in table.out
    listed = cli("suppression", "list", "--json")
    _no_raw_control(listed.out)
    assert json.loads(listed.out)[0]["source_delivery_id"] == EVIL_ID


# -- point 13c: an argument that is not UTF-8 ------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["send", "--channel", "sms", "--to", "+15551234567", "--body", "hunter2 \udcff"], "--body"),
        (["send", "--channel", "email", "--to", "oncall-alice@example.com\udcff", "--body", "b"], "--to"),
        (["status", "id-hunter2-\udcff"], "ID"),
        (["poison", "resolve", "id-hunter2-\udcff"], "IDS"),
    ],
    ids=["send-body", "send-to", "status-id", "poison-resolve-ids"],
)
def test_an_undecodable_argument_is_named_and_never_echoed(args: list[str], named: str) -> None:
    """A real process given real non-UTF-8 bytes: exit 2, the option's name, no piece of the value."""
    argv = [a.encode("utf-8", "surrogateescape") for a in args]
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"alert_worker", *argv],
        env=subprocess_env({"DATABASE_URL": "postgresql://127.0.0.1:1/none", "REDIS_URL": "redis://127.0.0.1:1/0"}),
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == b""
    assert done.stderr == f"alert-worker: error: {named}: not valid UTF-8 (value not shown)\n".encode()
    for piece in (b"hunter2", b"alice", b"\xff"):
        assert piece not in done.stderr
