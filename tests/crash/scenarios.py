"""The crash-consistency scenarios (issues 4 and 11), each returning an ``Outcome`` with its own verdict.

Every scenario runs real worker processes (``CRASH_WORKER``: threaded, forking or plain rq) against the
private servers,
produces its burst through the producer's order (row first, then job), injects its fault while the burst
is in flight, polls until every row is terminal (with a deadline), then judges provider-side records.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import redis

from tests.crash.fake_providers import Received, max_window_rate
from tests.crash.harness import Cluster, Delivery, Event, Outcome, Run, judge, slack_available, timed
from tests.crash.jobs import BOUNDARIES, CARRY_BOUNDARIES
from tests.support.silent_network import Unavailable, silent_link


@dataclass(frozen=True)
class Scale:
    """Sizes for one suite run: ``SMALL`` inside pytest (CI), ``FULL`` for ``python -m tests.crash --full``."""

    transient_n: int
    per_boundary: int
    worker_kill_n: int
    worker_kills: int
    warm_stops: int
    warm_stop_norow: int  # producer jobs with no row enqueued (at the front) just before each warm stop
    redis_n: int
    postgres_n: int
    postgres_down_seconds: float
    orphan_n: int  # producer-enqueued jobs with no row, enqueued while Postgres is down
    hang_n: int
    rate_limit: int
    rate_burst: int
    deadline: float
    grace_seconds: int  # ALERT_SWEEP_GRACE_SECONDS where a scenario needs the sweep to recover
    storm_n: int  # alerts of the storm scenario, to STORM_RECIPIENTS recipients


SMALL = Scale(
    transient_n=40,
    per_boundary=3,
    worker_kill_n=40,
    worker_kills=2,
    warm_stops=1,
    warm_stop_norow=12,
    redis_n=30,
    postgres_n=30,
    postgres_down_seconds=4,
    orphan_n=8,
    hang_n=6,
    rate_limit=5,
    rate_burst=8,
    deadline=120,
    grace_seconds=2,
    storm_n=200,
)
FULL = Scale(
    transient_n=1000,
    per_boundary=20,
    worker_kill_n=300,
    worker_kills=6,
    warm_stops=4,
    warm_stop_norow=40,
    redis_n=300,
    postgres_n=300,
    postgres_down_seconds=10,
    orphan_n=60,
    hang_n=40,
    rate_limit=20,
    rate_burst=35,
    deadline=420,
    grace_seconds=8,
    storm_n=600,
)


def _channels() -> list[str]:
    return ["email", "slack"] if slack_available() else ["email"]


def _channel(i: int) -> str:
    channels = _channels()
    return channels[i % len(channels)]


def _wait_for_progress(run: Run, fraction: float, timeout: float = 60) -> int:
    """Wait until ``fraction`` of the burst is terminal: the fault then lands mid-burst."""
    goal = max(1, int(len(run.deliveries) * fraction))
    run.wait_until_terminal(timeout, at_least=goal)
    return run.terminal_count()


# -- 1 ---------------------------------------------------------------------------------------------------
def transient_failures(cluster: Cluster, scale: Scale, seed: int = 1) -> Outcome:
    """N deliveries over 3 workers, 20 % of send attempts fail transiently; a few fail for good."""
    rng = random.Random(seed)
    deliveries = []
    script: tuple[str, ...]
    for i in range(scale.transient_n):
        if i % 25 == 7:  # permanent refusal: poisoned at once
            script, expect = ("permanent",), "poison"
        elif i % 50 == 13:  # fails every attempt: poisoned when attempts run out
            script, expect = ("transient",) * 5, "poison"
        else:
            failures = 0
            while rng.random() < 0.2 and failures < 4:
                failures += 1
            script, expect = ("transient",) * failures, "delivered"
        deliveries.append(Delivery(f"t1-{i:05d}", _channel(i), script, expect))
    outcome = Outcome("transient_20pct")
    # Nothing is lost here, so the sweep keeps its production grace: a short grace with a long queue makes
    # every pass re-enqueue every queued row (measured: 3.7 skipped jobs per real one at 2 s).
    with timed(outcome), Run(cluster, "s1", grace_seconds=60) as run:
        run.produce(deliveries)
        finished = run.wait_until_terminal(scale.deadline)
        judge(run, outcome, finished=finished, events=[])
        outcome.notes["transient_scripted"] = sum(len(d.script) for d in deliveries if d.expect == "delivered")
    return outcome


# -- 2 ---------------------------------------------------------------------------------------------------
def kill_at_boundaries(cluster: Cluster, scale: Scale) -> Outcome:
    """SIGKILL of the work-horse at each boundary, ``per_boundary`` times each, in one mixed burst."""
    deliveries = []
    for boundary in BOUNDARIES:
        script = ("transient",) if boundary.startswith("enqueue_in") else ()
        for n in range(scale.per_boundary):
            deliveries.append(Delivery(f"k2-{boundary}-{n:03d}", "email", script, crash=True))
    outcome = Outcome("kill_at_boundaries")
    # One delivery at a time per process: a self-kill at a boundary must take down only the delivery it
    # names, so each acceptance beyond the first is explained by exactly one kill event.
    one_at_a_time = {"ALERT_WORKER_THREADS": "1"}
    with timed(outcome), Run(cluster, "s2", env_overrides=one_at_a_time, grace_seconds=scale.grace_seconds) as run:
        run.produce(deliveries)
        finished = run.wait_until_terminal(scale.deadline)
        kills = run.kills()
        judge(run, outcome, finished=finished, events=[k for k in kills if k.kind == "after_send"])
        outcome.kills = len(kills)
        by_boundary = {b: sum(1 for k in kills if k.kind == b) for b in BOUNDARIES}
        outcome.notes["kills_by_boundary"] = by_boundary
        for boundary, count in by_boundary.items():
            if count != scale.per_boundary:
                outcome.failures.append(f"{boundary}: {count} kills injected, expected {scale.per_boundary}")
        accepted = cluster.provider.accepted_counts()
        for d in deliveries:
            want = 2 if "-after_send-" in d.id else 1
            if accepted.get(d.id, 0) != want:
                outcome.failures.append(f"{d.id}: provider accepted {accepted.get(d.id, 0)}, expected {want}")
    return outcome


# -- 3 ---------------------------------------------------------------------------------------------------
RQ_DEFAULT_JOB_TIMEOUT = 180  #: rq's default job timeout, which a producer's plain enqueue gets


def worker_kills(cluster: Cluster, scale: Scale) -> Outcome:
    """kill -9 of whole workers (parent, horse, scheduler) and SIGTERM warm shutdowns mid-burst.

    Just before each warm stop a producer enqueues ``warm_stop_norow`` jobs with no row at the front of the
    queue, so the SIGTERM lands while workers dequeue them: a job a stop strands there has no row for the
    sweep to find (docs/contract.md §7.4); each must still be delivered, and they are counted.
    """
    deliveries = [
        Delivery(f"w3-{i:05d}", _channel(i), ("transient",) if i % 5 == 0 else ("slow:0.05",))
        for i in range(scale.worker_kill_n)
    ]
    outcome = Outcome("worker_kills")
    events: list[Event] = []
    norow_jobs = 0
    with timed(outcome), Run(cluster, "s3", grace_seconds=scale.grace_seconds) as run:
        run.produce(deliveries)
        plan = ["kill"] * scale.worker_kills + ["term"] * scale.warm_stops
        random.Random(3).shuffle(plan)
        for step, action in enumerate(plan):
            _wait_for_progress(run, (step + 1) / (len(plan) + 2))
            proc = run.processes()[step % len(run.processes())]
            if action == "kill":
                proc.signal_group(signal.SIGSTOP)  # freeze the group, then read what it is running
                in_flight = run.current_deliveries(proc)
                proc.signal_group(signal.SIGKILL)
                events.extend(Event("worker_sigkill", delivery_id) for delivery_id in in_flight)
                outcome.kills += 1
            elif proc.process is not None:
                norow = [Delivery(f"w3-norow-{step}-{i:03d}", _channel(i)) for i in range(scale.warm_stop_norow)]
                run.enqueue_without_row(norow)
                norow_jobs += len(norow)
                proc.process.send_signal(signal.SIGTERM)
        # A producer's rowless job (RQ's default 180 s timeout) that a later kill -9 caught mid-run has no row
        # for the sweep to see: RQ declares it abandoned only when its heartbeat lapses (timeout + 60 s), and
        # the sweep's clean-up then requeues it. Wait that long for it; it must still be delivered.
        abandoned_after = RQ_DEFAULT_JOB_TIMEOUT + 60 + 30 if norow_jobs and outcome.kills else 0
        finished = run.wait_until_terminal(max(scale.deadline, abandoned_after))
        judge(run, outcome, finished=finished, events=events)
        outcome.notes["sigkill_in_flight"] = len(events)
        outcome.notes["warm_stops"] = scale.warm_stops
        outcome.notes["warm_stop_no_row_jobs"] = norow_jobs
        statuses = run.statuses() or {}
        outcome.notes["warm_stop_no_row_delivered"] = sum(
            1 for d in run.deliveries if "-norow-" in d.id and statuses.get(d.id) == "delivered"
        )
    return outcome


# -- 4 ---------------------------------------------------------------------------------------------------
def redis_restart(cluster: Cluster, scale: Scale) -> Outcome:
    """Redis SIGKILLed and restarted empty mid-burst: queued jobs and scheduled retries vanish."""
    deliveries = [
        Delivery(f"r4-{i:05d}", _channel(i), ("transient",) if i % 3 == 0 else ()) for i in range(scale.redis_n)
    ]
    outcome = Outcome("redis_restart_empty")
    with (
        timed(outcome),
        Run(cluster, "s4", env_overrides={"ALERT_RETRY_DELAYS": "3"}, grace_seconds=scale.grace_seconds) as run,
    ):
        run.produce(deliveries)
        before = _wait_for_progress(run, 0.3)
        cluster.redis.restart_empty()
        outcome.notes["terminal_before_restart"] = before
        finished = run.wait_until_terminal(scale.deadline)
        judge(run, outcome, finished=finished, events=[])
        outcome.restarts += 1
    return outcome


# -- 5 ---------------------------------------------------------------------------------------------------
_DB_ERRORS = ("OperationalError", "PoolTimeout", "psycopg")


def postgres_outage(cluster: Cluster, scale: Scale) -> Outcome:
    """PostgreSQL stopped for a while mid-burst, then started again.

    While it is down, a producer that skips ``send`` enqueues ``orphan_n`` jobs with no row
    (``Queue.enqueue(execute_delivery_job, ...)``). The outage lasts until each of them has run and failed
    (at least ``postgres_down_seconds``): the sweep cannot see them, so only the job's own copy
    (docs/contract.md §6.3) can deliver them once Postgres is back.
    """
    deliveries = [Delivery(f"p5-{i:05d}", _channel(i), ("slow:0.1",)) for i in range(scale.postgres_n)]
    orphans = [Delivery(f"p5-norow-{i:05d}", _channel(i)) for i in range(scale.orphan_n)]
    outcome = Outcome("postgres_outage")
    with timed(outcome), Run(cluster, "s5", grace_seconds=scale.grace_seconds) as run:
        run.produce(deliveries)
        before = _wait_for_progress(run, 0.2)
        with cluster.postgres.down():
            down_at = time.monotonic()
            orphan_jobs = set(run.enqueue_without_row(orphans))
            failed_while_down = _wait_for_failed(run, orphan_jobs, timeout=max(30.0, scale.postgres_down_seconds))
            time.sleep(max(0.0, scale.postgres_down_seconds - (time.monotonic() - down_at)))  # the outage itself
        outcome.notes["outage_seconds"] = round(time.monotonic() - down_at, 1)
        outcome.notes["terminal_before_outage"] = before
        finished = run.wait_until_terminal(scale.deadline)
        failed = run.failed_jobs()
        db_failures = [(d, exc) for d, exc in failed if any(e in exc for e in _DB_ERRORS)]
        # A job that sent and then could not write the row is the "accepted, not written" case.
        events = [Event("db_write_failed_after_send", d) for d, exc in db_failures if "mark_delivered" in exc]
        judge(run, outcome, finished=finished, events=events)
        outcome.restarts += 1
        outcome.notes["failed_jobs_db_error"] = len(db_failures)
        outcome.notes["failed_after_send"] = len(events)
        outcome.notes["no_row_jobs"] = len(orphans)
        outcome.notes["no_row_failed_while_down"] = len(failed_while_down)
        if before < len(deliveries) and not db_failures:
            outcome.failures.append("the outage hit the burst, yet no job failed loudly with a database error")
        if len(failed_while_down) < len(orphans):
            outcome.failures.append(
                f"only {len(failed_while_down)} of {len(orphans)} jobs without a row ran while Postgres was down"
            )
        unexplained = [exc.strip().splitlines()[-1] for _, exc in failed if not any(e in exc for e in _DB_ERRORS)]
        if unexplained:
            outcome.notes["other_failed_jobs"] = unexplained[:5]
    return outcome


def _wait_for_failed(run: Run, job_ids: set[str], *, timeout: float) -> set[str]:
    """The subset of ``job_ids`` RQ recorded as failed, once all are or at the deadline."""
    deadline = time.monotonic() + timeout
    found: set[str] = set()
    while time.monotonic() < deadline:
        found = job_ids & run.failed_job_ids()
        if found == job_ids:
            break
        time.sleep(0.2)
    return found


# -- 5b --------------------------------------------------------------------------------------------------
def postgres_silent(cluster: Cluster, scale: Scale) -> Outcome:
    """The workers' network to PostgreSQL goes silent mid-burst (no RST, no answer), then heals (§7.3).

    Every job running when it goes silent ends within ``ALERT_JOB_TIMEOUT_SECONDS`` + 15 s (TCP keepalives
    and ``tcp_user_timeout`` end its Postgres call), and once the network heals every row is delivered with
    no duplicate: a send whose ``delivered`` write hung left its sent marker. The harness itself reaches
    Postgres directly. Needs root for the network namespace; elsewhere it is skipped, with the reason.
    """
    deliveries = [Delivery(f"q5-{i:05d}", _channel(i), ("slow:0.2",)) for i in range(scale.postgres_n)]
    outcome = Outcome("postgres_silent")
    target = ("127.0.0.1", cluster.postgres.port)
    try:
        link_context = silent_link(target)
        link = link_context.__enter__()
    except Unavailable as exc:
        outcome.notes["skipped"] = str(exc)
        return outcome
    try:
        with (
            timed(outcome),
            Run(cluster, "s5b", grace_seconds=scale.grace_seconds, worker_database_url=link.dsn) as run,
        ):
            run.produce(deliveries)
            before = _wait_for_progress(run, 0.2)
            running = run.started_job_ids()
            link.silence()
            silent_at = time.monotonic()
            bound = run.settings.job_timeout_seconds + 15
            while running & run.started_job_ids() and time.monotonic() - silent_at < bound + 30:
                time.sleep(0.2)
            outcome.notes["in_flight_at_silence"] = len(running)
            outcome.notes["in_flight_ended_after_seconds"] = round(time.monotonic() - silent_at, 1)
            if running & run.started_job_ids():
                outcome.failures.append(f"a job running when Postgres went silent still ran after {bound + 30} s")
            time.sleep(max(0.0, scale.postgres_down_seconds - (time.monotonic() - silent_at)))
            link.heal()
            finished = run.wait_until_terminal(scale.deadline)
            judge(run, outcome, finished=finished, events=[])  # the sent marker leaves no duplicate to explain
            outcome.notes["terminal_before_silence"] = before
            outcome.notes["failed_jobs"] = len(run.failed_jobs())
    finally:
        link_context.__exit__(None, None, None)
    return outcome


# -- 6 ---------------------------------------------------------------------------------------------------
def provider_hang(cluster: Cluster, scale: Scale) -> Outcome:
    """The provider says nothing for longer than the send timeout: transient, retried, nobody stuck."""
    deliveries = [Delivery(f"h6-{i:05d}", _channel(i), ("hang:3",)) for i in range(scale.hang_n)]
    outcome = Outcome("provider_hang")
    with timed(outcome), Run(cluster, "s6", grace_seconds=scale.grace_seconds) as run:
        run.produce(deliveries)
        finished = run.wait_until_terminal(scale.deadline)
        judge(run, outcome, finished=finished, events=[])
        timeout = run.settings.job_timeout_seconds
        durations = run.finished_job_durations()
        failed = run.failed_jobs()
        outcome.notes["longest_job_seconds"] = round(max(durations, default=0.0), 3)
        if any(t >= timeout for t in durations):
            outcome.failures.append(f"a job ran {max(durations):.2f} s, past job_timeout {timeout} s")
        if failed:
            outcome.failures.append(f"{len(failed)} jobs failed (e.g. {failed[0][1].strip().splitlines()[-1]})")
        calls = cluster.provider.calls
        if any(calls[d.id] < 2 for d in deliveries):
            outcome.failures.append("a hung delivery was not retried")
    return outcome


def provider_slow_answer(cluster: Cluster, scale: Scale) -> Outcome:
    """Twilio accepts each SMS and answers slower than the job timeout, every piece inside the send timeout
    (headers line by line: the job timeout cuts the send off; the body byte by byte: the send deadline does).
    Either way an unknown outcome (§7.1): the retry finds the message at Twilio. Judged: no duplicate."""
    pace = 0.8  # between answer pieces: inside the suite's send timeout (1 s), eight past its job timeout (2 s)
    scripts = (f"slow_answer:{pace}", f"slow_body:{pace}")
    deliveries = [Delivery(f"q9-{i:05d}", "sms", (scripts[i % 2],)) for i in range(scale.hang_n)]
    outcome = Outcome("provider_slow_answer")
    with timed(outcome), Run(cluster, "s9", grace_seconds=scale.grace_seconds) as run:
        run.produce(deliveries)
        finished = run.wait_until_terminal(scale.deadline)
        judge(run, outcome, finished=finished, events=[])  # no fault event: any duplicate fails the scenario
        calls = cluster.provider.calls
        if any(calls[d.id] != 1 for d in deliveries):
            outcome.failures.append(f"an SMS was posted again: {sorted(calls[d.id] for d in deliveries)}")
    return outcome


# -- 7 ---------------------------------------------------------------------------------------------------
def rate_limit_burst(cluster: Cluster, scale: Scale) -> Outcome:
    """A burst larger than the per-minute limit: all sent, never more than the limit in any 60 s window."""
    limit = scale.rate_limit
    deliveries = [Delivery(f"l7-{i:05d}", "email") for i in range(scale.rate_burst)]
    outcome = Outcome("rate_limit_burst")
    overrides = {"ALERT_RATE_EMAIL_PER_MIN": str(limit)}
    with (
        timed(outcome),
        Run(cluster, "s7", env_overrides=overrides, sweep_interval=2.0, grace_seconds=scale.grace_seconds) as run,
    ):
        run.produce(deliveries)
        finished = run.wait_until_terminal(scale.deadline + 60 * (scale.rate_burst // limit))
        judge(run, outcome, finished=finished, events=[])
        outcome.max_window_rate = max_window_rate(cluster.provider.receive_times(), 60.0)
        outcome.limit = limit
        if outcome.max_window_rate > limit:
            outcome.failures.append(f"provider saw {outcome.max_window_rate} sends in 60 s, limit {limit}")
    return outcome


# -- 8 ---------------------------------------------------------------------------------------------------
def threaded_kill_in_flight(cluster: Cluster, scale: Scale, *, in_flight: int = 16) -> Outcome:
    """kill -9 of a threaded worker with ``in_flight`` deliveries mid-send: all delivered within the job
    timeout plus two sweep intervals of the kill (dead-worker reclaim), not the stuck threshold."""
    job_timeout, sweep_interval = 6, 1.0
    deliveries = [Delivery(f"t8-{i:05d}", "email", ("hang:4",)) for i in range(in_flight)]
    outcome = Outcome("threaded_kill_in_flight")
    env = {
        "ALERT_WORKER_THREADS": str(in_flight),
        "ALERT_SEND_TIMEOUT_SECONDS": "5",
        "ALERT_JOB_TIMEOUT_SECONDS": str(job_timeout),
        "ALERT_STUCK_AFTER_SECONDS": "600",
    }
    with (
        timed(outcome),
        Run(cluster, "s8", workers=1, env_overrides=env, sweep_interval=sweep_interval, mode="threaded") as run,
    ):
        run.produce(deliveries)
        if not _wait_for_sends(cluster, deliveries, timeout=60):  # every one inside its first (hanging) DATA
            outcome.failures.append(f"never saw {in_flight} sends in flight at once")
        proc = run.processes()[0]
        proc.signal_group(signal.SIGKILL)
        killed_at = time.monotonic()
        outcome.kills = 1
        budget = job_timeout + 2 * sweep_interval
        finished = run.wait_until_terminal(scale.deadline)
        outcome.notes["recovery_seconds"] = round(time.monotonic() - killed_at, 1)
        outcome.notes["budget_seconds"] = budget
        judge(run, outcome, finished=finished, events=[])
        if outcome.notes["recovery_seconds"] > budget + _RESTART_ALLOWANCE_SECONDS:
            outcome.failures.append(f"recovered in {outcome.notes['recovery_seconds']} s, budget {budget} s")
    return outcome


def _wait_for_sends(cluster: Cluster, deliveries: list[Delivery], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with cluster.provider.lock:
            if all(cluster.provider.calls[d.id] >= 1 for d in deliveries):
                return True
        time.sleep(0.05)
    return False


# -- 9 ---------------------------------------------------------------------------------------------------
STORM_WAVES = 10
STORM_RECIPIENT_LIMIT = 2  # per recipient per hour: two messages a wave, each carrying what is held


def storm_carry(cluster: Cluster, scale: Scale) -> Outcome:
    """An alert storm (docs/contract.md §8): ``storm_n`` alerts in waves to four recipients (three mailboxes,
    one webhook) with a per-recipient limit of 2 an hour and digests of at most 10.

    Between waves "an hour passes" for the limiter (the recipients' window entries are removed: the only
    way a slot frees, no sleep), so each wave's first alerts to a recipient take its two slots and carry
    what earlier waves left held. In waves 1-4 the first alert to each recipient is a crash delivery for
    one boundary of a carrying send (after the claim of the carried rows, after the provider accepted,
    before and after the ``delivered`` writes): its job kills its worker there if its message carries.
    At the end the held rows are made due and the hour passes until every row is terminal.

    Judged: lost=0; every carried delivery (``delivered_via``) is in a message its carrier's provider
    accepted, every other delivered row in a message of its own; a delivery accepted more than once only
    where a kill struck between acceptance and the write (the carrier, and what that message carried).
    """
    recipients = [("email", f"oncall-{n}@rcpt.crash.test") for n in range(3)]
    recipients.append(("slack", f"{cluster.webhook_base}/services/T000/B000/storm"))
    per_wave = scale.storm_n // STORM_WAVES
    waves: list[list[Delivery]] = []
    for w in range(STORM_WAVES):
        boundary = CARRY_BOUNDARIES[w - 1] if 1 <= w <= len(CARRY_BOUNDARIES) else None
        wave: list[Delivery] = []
        for r, (channel, to) in enumerate(recipients):  # the crash delivery first: it is likeliest to carry
            if boundary is not None:
                wave.append(Delivery(f"s9-{boundary}-{w:02d}{r}", channel, crash=True, to=to))
        for i in range(per_wave - len(wave)):
            channel, to = recipients[i % len(recipients)]
            wave.append(Delivery(f"s9-w{w:02d}-{i:04d}", channel, to=to))
        waves.append(wave)
    outcome = Outcome("storm_carry")
    env = {
        "ALERT_WORKER_THREADS": "1",  # a self-kill takes down only the delivery it names (and what it carries)
        "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR": str(STORM_RECIPIENT_LIMIT),
        "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR": str(STORM_RECIPIENT_LIMIT),
        "ALERT_DIGEST_MAX_ITEMS": "10",
    }
    with timed(outcome), Run(cluster, "s9", env_overrides=env, grace_seconds=scale.grace_seconds) as run:
        for wave in waves:
            _hour_passes(run)
            run.produce(wave)
            if not _wait_settled(run, timeout=scale.deadline):
                outcome.failures.append(f"wave {wave[0].id}: rows still in flight at the deadline")
        deadline = time.monotonic() + scale.deadline
        while not run.wait_until_terminal(3.0) and time.monotonic() < deadline:
            _hour_passes(run, wake_held=True)
        finished = run.wait_until_terminal(1.0)
        kills = run.kills()
        messages = cluster.provider.messages()
        carried_by: dict[str, list[str]] = {}
        for m in messages:
            carried_by.setdefault(m.delivery_id, []).extend(m.carried)
        # The duplicates a kill may explain (the forced kind: accepted, then the writes lost). After the
        # provider accepted, before the sent markers: the carrier and everything it carried. Before the
        # writes: the carrier only (each carried id has its marker by then). Elsewhere: none.
        events = [Event(k.kind, k.delivery_id) for k in kills if k.kind in ("carry_after_send", "carry_before_write")]
        events += [
            Event(k.kind, carried)
            for k in kills
            if k.kind == "carry_after_send"
            for carried in carried_by.get(k.delivery_id, [])
        ]
        judge(run, outcome, finished=finished, events=events)
        accepted = cluster.provider.accepted_counts()
        outcome.notes["duplicates_by_boundary"] = {
            kind: sum(max(0, accepted.get(e.delivery_id, 0) - 1) for e in events if e.kind == kind)
            for kind in ("carry_after_send", "carry_before_write")
        }
        outcome.kills = len(kills)
        by_boundary = {b: sum(1 for k in kills if k.kind == b) for b in CARRY_BOUNDARIES}
        outcome.notes["kills_by_boundary"] = by_boundary
        outcome.notes["messages"] = len(messages)
        outcome.notes["carried"] = sum(len(m.carried) for m in messages)
        for boundary, count in by_boundary.items():
            if count == 0:
                outcome.failures.append(f"{boundary}: no carrying send was killed there")
        _judge_carriers(run, outcome, messages)
    return outcome


def _hour_passes(run: Run, *, wake_held: bool = False) -> None:
    """What an hour does to the limiter: every recipient's window empties. ``wake_held``: and the held
    rows' wake-ups come due (the sweep enqueues them)."""
    conn = redis.Redis.from_url(run.cluster.redis.url, socket_timeout=5)
    try:
        for key in conn.scan_iter("alert:rl:recipient:*"):
            conn.delete(key)
    finally:
        conn.close()
    if wake_held:
        with psycopg.connect(run.settings.database_url, autocommit=True, connect_timeout=5) as db:
            db.execute(
                "UPDATE alert_deliveries SET next_attempt_at = now() - interval '1 hour' "
                "WHERE status = 'pending' AND next_attempt_at > now()"
            )


def _wait_settled(run: Run, *, timeout: float) -> bool:
    """Every row produced so far is terminal or held (pending, not due for an hour): the wave is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(run.settings.database_url, connect_timeout=2) as db:
                (moving,) = db.execute(
                    "SELECT count(*) FROM alert_deliveries WHERE status = 'in_progress' "
                    "OR (status = 'pending' AND COALESCE(next_attempt_at, now()) < now() + interval '10 minutes')"
                ).fetchone() or (1,)
                (rows,) = db.execute("SELECT count(*) FROM alert_deliveries").fetchone() or (0,)
            if moving == 0 and rows == len(run.deliveries):
                return True
        time.sleep(0.3)
    return False


def _judge_carriers(run: Run, outcome: Outcome, messages: list[Received]) -> None:
    """Every carried row names a carrier whose accepted message carried it; every other delivered row was
    the carrier of a message of its own."""
    with psycopg.connect(run.settings.database_url) as db:
        rows = db.execute("SELECT id, delivered_via FROM alert_deliveries WHERE status = 'delivered'").fetchall()
    own = {m.delivery_id for m in messages}
    inside = {(m.delivery_id, c) for m in messages for c in m.carried}
    via_rows = 0
    for delivery_id, via in rows:
        if via is None and delivery_id not in own:
            outcome.failures.append(f"{delivery_id}: delivered, yet no message was its own")
        if via is not None:
            via_rows += 1
            if (via, delivery_id) not in inside:
                outcome.failures.append(f"{delivery_id}: delivered via {via}, yet no message of {via} carried it")
    outcome.notes["delivered_via_rows"] = via_rows
    if via_rows == 0:
        outcome.failures.append("no delivery was carried: the storm never held anything")


# A restarted worker needs its start-up checks and first dequeue before it can deliver what was reclaimed.
_RESTART_ALLOWANCE_SECONDS = 2.0


# Scenarios about one worker kind: they run that kind whatever CRASH_WORKER says, so a run for another
# kind skips them (its figures are that kind's alone).
THREADED_ONLY = frozenset({"threaded_kill_in_flight"})

SCENARIOS: dict[str, Callable[[Cluster, Scale], Outcome]] = {
    "transient_20pct": transient_failures,
    "kill_at_boundaries": kill_at_boundaries,
    "worker_kills": worker_kills,
    "redis_restart_empty": redis_restart,
    "postgres_outage": postgres_outage,
    "postgres_silent": postgres_silent,
    "provider_hang": provider_hang,
    "provider_slow_answer": provider_slow_answer,
    "rate_limit_burst": rate_limit_burst,
    "threaded_kill_in_flight": threaded_kill_in_flight,
    "storm_carry": storm_carry,
}
