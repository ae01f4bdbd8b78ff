"""Alert storms (docs/contract.md §8) across a real worker process, real Postgres and Redis, and a loopback Twilio.

Twenty SMS alerts to one number with the default per-recipient limit (3 an hour): three messages go out and
seventeen are held for the number; ``alert-worker release`` sends them in one message. Left to itself, the
storm poisons nothing: when the limit's window frees a slot, that one message carries every held alert.

The worker runs ``alert-worker run`` with Twilio's HTTP client pointed at this module's loopback server
(``STORM_TWILIO_BASE``; the launcher below patches the client's request, the package has no test hook).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psycopg
import pytest
import redis

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import run_cli, subprocess_env
from tests.support.processes import WorkerProcess, wait_until

pytestmark = pytest.mark.e2e

NUMBER = "+15551230000"
TWILIO_SID = "AC" + "2" * 32
STORM = 20
# `alert-worker ARGS` with Twilio's API base replaced by STORM_TWILIO_BASE (a loopback http server).
LAUNCHER = """
import os, sys
from twilio.http.http_client import TwilioHttpClient
_request = TwilioHttpClient.request
def request(self, method, url, *args, **kwargs):
    url = url.replace("https://api.twilio.com", os.environ["STORM_TWILIO_BASE"])
    return _request(self, method, url, *args, **kwargs)
TwilioHttpClient.request = request
if sys.argv[1] == "rq":  # plain `rq worker ...`
    from rq.cli.cli import main as rq_main
    sys.argv = sys.argv[1:]
    rq_main()
from alert_worker.cli import main
sys.exit(main(sys.argv[1:]))
"""
WORKERS = {
    "threaded": ["run"],
    "forking": ["run", "--worker-class", "rq.worker.Worker"],
    "plain-rq-worker": ["rq", "worker", "alerts", "--with-scheduler", "--disable-job-desc-logging"],
}


@dataclass
class StormTwilio:
    """Twilio's Messages API on loopback: every POST is accepted (201, a new SID) and recorded."""

    accepted: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def bodies(self) -> list[str]:
        with self.lock:
            return [m["body"] for m in self.accepted]


@pytest.fixture
def twilio() -> Iterator[StormTwilio]:
    fake = StormTwilio()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            with fake.lock:
                message = {
                    "sid": f"SM{len(fake.accepted) + 1:032d}",
                    "to": form["To"][0],
                    "from": form.get("From", [""])[0],
                    "body": form["Body"][0],
                    "status": "queued",
                    "date_created": format_datetime(datetime.now(UTC), usegmt=True),
                }
                fake.accepted.append(message)
            data = json.dumps(message).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def env(worker_env: dict[str, str], twilio: StormTwilio) -> dict[str, str]:
    return {
        **worker_env,
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": "storm-token",
        "TWILIO_FROM_NUMBER": "+15005550006",
        "STORM_TWILIO_BASE": twilio.base_url,
        "ALERT_WORKER_THREADS": "1",  # FIFO: the first three alerts take the three slots before any is held
    }


@contextmanager
def storm_worker(env: dict[str, str], kind: str = "threaded") -> Iterator[WorkerProcess]:
    args = WORKERS[kind] + (["--url", env["REDIS_URL"]] if kind == "plain-rq-worker" else [])
    with tempfile.TemporaryDirectory(prefix="alert-storm-") as tmp:
        worker = WorkerProcess(log_path=Path(tmp) / "worker.log", env=subprocess_env(env))
        worker.launch([sys.executable, "-c", LAUNCHER, *args])
        try:
            yield worker
        finally:
            worker.kill()


def _storm(env: dict[str, str]) -> list[str]:
    settings = Settings.from_env(env)
    ids = [f"storm-{n:02d}" for n in range(STORM)]
    for n, delivery_id in enumerate(ids):
        send_alert(
            "sms", NUMBER, f"db-{n} disk full", f"/var at 9{n % 10}%", delivery_id=delivery_id, settings=settings
        )
    return ids


def _rows(database_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, status, error_message, delivered_via, provider_message_id FROM alert_deliveries"
        ).fetchall()
    return {r[0]: {"status": r[1], "error": r[2] or "", "via": r[3], "sid": r[4]} for r in rows}


def _three_sent_and_seventeen_held(database_url: str) -> bool:
    rows = _rows(database_url)
    statuses = [r["status"] for r in rows.values()]
    held = [r for r in rows.values() if r["status"] == "pending" and r["error"].startswith("rate_limited: recipient")]
    return len(rows) == STORM and statuses.count("delivered") == 3 and len(held) == STORM - 3


@pytest.mark.parametrize("kind", list(WORKERS))
def test_twenty_sms_to_one_number_send_three_hold_seventeen_and_release_sends_them_in_one_message(
    kind: str, env: dict[str, str], twilio: StormTwilio, database_url: str
) -> None:
    """3 messages, 17 held; `release` prints `carried 17` and sends 1 message; all 20 delivered, the 16 carried
    ones naming the carrier (the oldest held alert, which holds the message's SID) in ``delivered_via``."""
    with storm_worker(env, kind) as worker:
        _storm(env)
        wait_until(lambda: _three_sent_and_seventeen_held(database_url), timeout=90, what="3 sent, 17 held")
        assert len(twilio.bodies()) == 3
        status = run_cli(["status", "--json"], env)
        assert json.loads(status.stdout)["held"] == {"email": 0, "slack": 0, "sms": STORM - 3}
        held_one = run_cli(["status", "storm-19", "--json"], env)
        assert json.loads(held_one.stdout)["held"] is True

        released = run_cli(["release", "--channel", "sms", "--to", NUMBER], env, timeout=120)
        log = worker.text()

    assert released.returncode == 0, released.stderr
    assert released.stdout.strip().splitlines()[-1] == "carried 17"
    bodies = twilio.bodies()
    assert len(bodies) == 4, "the three that fit the limit, then one message for the seventeen held"
    assert bodies[3].startswith("17 alerts:\n- db-3 disk full\n- db-4 disk full")
    assert all(f"- db-{n} disk full" in bodies[3] for n in range(3, STORM))
    rows = _rows(database_url)
    assert {r["status"] for r in rows.values()} == {"delivered"}
    assert rows["storm-03"]["via"] is None and rows["storm-03"]["sid"] == "SM" + "4".rjust(32, "0")
    carried = [i for i, r in rows.items() if r["via"] == "storm-03"]
    assert sorted(carried) == [f"storm-{n:02d}" for n in range(4, STORM)]
    assert all(rows[i]["sid"] is None for i in carried), "only the carrier's row holds the provider's id"
    assert '"event": "held_released"' in log
    assert NUMBER not in log


def test_a_storm_left_to_itself_poisons_nothing_the_freed_slot_carries_every_held_alert(
    env: dict[str, str], twilio: StormTwilio, database_url: str, redis_client: redis.Redis
) -> None:
    """With a 5 s deferral budget (which poisons at the first per-recipient deferral without §8), nothing is
    poisoned. An hour is made to pass through the limiter's state and the held rows' wake-up times (no sleep):
    one message carries all seventeen."""
    quick = {
        **env,
        "ALERT_MAX_DEFER_SECONDS": "5",
        "ALERT_SWEEP_INTERVAL_SECONDS": "1",
        "ALERT_SWEEP_GRACE_SECONDS": "1",
    }
    with storm_worker(quick):
        _storm(quick)
        wait_until(lambda: _three_sent_and_seventeen_held(database_url), timeout=90, what="3 sent, 17 held")
        # The hour passes: the recipient's window entries age out and the held rows' wake-ups come due.
        for key in redis_client.scan_iter("alert:rl:recipient:sms:*"):
            entries = redis_client.zrange(key, 0, -1, withscores=True)
            redis_client.zadd(key, {member: score - 3700 for member, score in entries})
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE alert_deliveries SET next_attempt_at = now() - interval '2 seconds' WHERE status = 'pending'"
            )

        def all_delivered() -> bool:
            return {r["status"] for r in _rows(database_url).values()} == {"delivered"}

        wait_until(all_delivered, timeout=90, what="all twenty delivered")

    rows = _rows(database_url)
    assert not [i for i, r in rows.items() if r["status"] == "poison"]
    bodies = twilio.bodies()
    assert len(bodies) == 4, f"three, then one carrying the seventeen: {[b.splitlines()[0] for b in bodies]}"
    assert bodies[3].startswith("17 alerts:")
    carriers = {r["via"] for r in rows.values() if r["via"] is not None}
    assert len(carriers) == 1 and sum(1 for r in rows.values() if r["via"]) == 16
