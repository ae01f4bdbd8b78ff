"""The sweep's and the operators' statements on ``alert_deliveries`` (a mixin of ``DeliveryStore``).

Recovery moves rows the queue lost back to it: overdue pending rows, stuck in-progress rows and rows
whose claiming worker is dead (docs/contract.md §6.1); operators replay and resolve poisoned rows. Each move is
one statement, stamped by the database clock, so two sweepers never take the same row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from alert_worker.models import DeliveryStatus

#: Recording an SMS attempt a reclaim found lost (§7.1): the later attempt's start wins, and a lost attempt of
#: the row's own replaces what a carrier's digest had recorded for it (its text is the row's own again).
LOST_ATTEMPT_CONFLICT = """ON CONFLICT (delivery_id) DO UPDATE
                   SET attempt_started_at = GREATEST(alert_unknown_outcomes.attempt_started_at,
                                                     EXCLUDED.attempt_started_at),
                       sent_sha256 = CASE WHEN EXCLUDED.attempt_started_at >= alert_unknown_outcomes.attempt_started_at
                                          THEN NULL ELSE alert_unknown_outcomes.sent_sha256 END,
                       carried_by = CASE WHEN EXCLUDED.attempt_started_at >= alert_unknown_outcomes.attempt_started_at
                                         THEN NULL ELSE alert_unknown_outcomes.carried_by END"""


@dataclass(frozen=True)
class RecoveredDelivery:
    """A row the sweep or a replay hands back to the queue."""

    id: str
    channel: str
    payload: dict[str, Any] | None
    queue: str
    attempts: int
    stamp: datetime


class RecoveryStatements:
    """Needs ``_pool`` and ``_stuck_after_seconds`` from the class it is mixed into."""

    _pool: ConnectionPool
    _stuck_after_seconds: int

    # -- recovery and operators ----------------------------------------------------------------------
    def pending_queues(self) -> list[str]:
        """The RQ queues that pending rows travel on (the sweep asks each how far behind it is)."""
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT DISTINCT queue FROM alert_deliveries WHERE status = 'pending'").fetchall()
        return [r[0] for r in rows]

    def take_overdue(
        self,
        *,
        grace_seconds: int,
        limit: int = 500,
        due_before: Mapping[str, datetime] | None = None,
        claimant_alive: Callable[[str], bool] | None = None,
        dead_after_seconds: int = 60,
    ) -> list[RecoveredDelivery]:
        """Stamp and return overdue pending rows, stuck in-progress rows and rows of dead claimants.

        ``due_before`` maps a queue to a time: a pending row on that queue is taken only if it became due
        before then (its job, if any, would already have left the queue). A row whose ``claimed_by``
        worker ``claimant_alive`` says is gone, claimed more than ``dead_after_seconds`` ago, goes back
        to ``pending`` with the lost attempt counted (as a stuck reclaim counts it) and its claim token
        cleared, so the old claimer can write nothing more; an SMS row also gets an unknown outcome from
        its ``last_attempt_at`` in the same statement (the lost attempt may have sent it: the next claim
        looks it up first, docs/contract.md §7.1). The grace period spaces repeated re-enqueues
        of a row; it never delays a row's first reclaim. ``FOR UPDATE SKIP LOCKED`` lets two sweepers
        run at once without taking the same row. ``dead`` is never NULL: a row with no ``claimed_by``
        (``NULL = ANY(...)`` is NULL, not false) keeps the stuck threshold and must not turn
        ``attempts`` into NULL.
        """
        cutoffs = dict(due_before or {})
        dead = self._dead_claimants(claimant_alive, dead_after_seconds) if claimant_alive else []
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"""
                WITH moved AS (
                UPDATE alert_deliveries AS d
                   SET status = CASE WHEN c.dead THEN 'pending' ELSE d.status END,
                       attempts = d.attempts + c.dead::int,
                       claim_token = CASE WHEN c.dead THEN NULL ELSE d.claim_token END,
                       error_message = CASE WHEN c.dead THEN 'worker_lost' ELSE d.error_message END,
                       next_attempt_at = CASE WHEN d.status = 'pending' OR c.dead THEN now()
                                              ELSE d.next_attempt_at END,
                       updated_at = now()
                  FROM (
                       SELECT id, COALESCE(status = 'in_progress' AND claimed_by = ANY(%(dead)s::text[])
                                            AND last_attempt_at < now() - make_interval(secs => %(dead_after)s),
                                            false) AS dead
                         FROM alert_deliveries
                        WHERE (status = 'pending'
                               AND COALESCE(next_attempt_at, updated_at) < now() - make_interval(secs => %(grace)s)
                               AND COALESCE(next_attempt_at, updated_at) < COALESCE(
                                   (SELECT q.cutoff
                                      FROM unnest(%(queues)s::text[], %(cutoffs)s::timestamptz[]) AS q(queue, cutoff)
                                     WHERE q.queue = alert_deliveries.queue),
                                   'infinity'))
                           OR (status = 'in_progress'
                               AND last_attempt_at < now() - make_interval(secs => %(stuck)s)
                               AND (updated_at = last_attempt_at
                                    OR updated_at < now() - make_interval(secs => %(grace)s)))
                           OR (status = 'in_progress' AND claimed_by = ANY(%(dead)s::text[])
                               AND last_attempt_at < now() - make_interval(secs => %(dead_after)s))
                        ORDER BY COALESCE(next_attempt_at, updated_at)
                        LIMIT %(limit)s
                        FOR UPDATE SKIP LOCKED) AS c
                 WHERE d.id = c.id
                RETURNING d.id, d.channel, d.payload, d.queue, d.attempts, now() AS stamp, c.dead,
                          d.last_attempt_at
                ), lost AS (
                INSERT INTO alert_unknown_outcomes (delivery_id, channel, attempt_started_at)
                SELECT id, channel, last_attempt_at FROM moved
                 WHERE dead AND channel = 'sms' AND last_attempt_at IS NOT NULL
                {LOST_ATTEMPT_CONFLICT}
                )
                SELECT id, channel, payload, queue, attempts, stamp FROM moved
                """,
                {
                    "grace": grace_seconds,
                    "stuck": self._stuck_after_seconds,
                    "limit": limit,
                    "queues": list(cutoffs),
                    "cutoffs": list(cutoffs.values()),
                    "dead": dead,
                    "dead_after": dead_after_seconds,
                },
            ).fetchall()
        return [RecoveredDelivery(*r) for r in rows]

    def _dead_claimants(self, claimant_alive: Callable[[str], bool], dead_after_seconds: int) -> list[str]:
        """Claimants of in-progress rows older than ``dead_after_seconds`` that are no longer alive."""
        with self._pool.connection() as conn:
            names = conn.execute(
                "SELECT DISTINCT claimed_by FROM alert_deliveries WHERE status = 'in_progress' "
                "AND claimed_by IS NOT NULL AND last_attempt_at < now() - make_interval(secs => %s)",
                (dead_after_seconds,),
            ).fetchall()
        return [name for (name,) in names if not claimant_alive(name)]

    def replay(self, delivery_ids: list[str]) -> list[RecoveredDelivery]:
        """Poison rows back to pending with attempts and deferrals cleared; each returned once only."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                """
                UPDATE alert_deliveries
                   SET status = 'pending', attempts = 0, deferrals = 0, deferred_since = NULL,
                       next_attempt_at = now(), claim_token = NULL, error_message = NULL, updated_at = now()
                 WHERE id = ANY(%s) AND status = 'poison' AND payload IS NOT NULL
                RETURNING id, channel, payload, queue, attempts, now()
                """,
                (delivery_ids,),
            ).fetchall()
        return [RecoveredDelivery(*r) for r in rows]

    def resolve(self, delivery_ids: list[str], *, note: str | None = None) -> list[str]:
        """Poison rows to ``failed`` with the payload erased; returns the ids moved."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                """
                UPDATE alert_deliveries
                   SET status = 'failed', payload = NULL, next_attempt_at = NULL, updated_at = now(),
                       error_message = COALESCE(%s, error_message)
                 WHERE id = ANY(%s) AND status = 'poison'
                RETURNING id
                """,
                (note, delivery_ids),
            ).fetchall()
        return [r[0] for r in rows]

    def existing_ids(self, delivery_ids: list[str]) -> set[str]:
        """Which of these deliveries have a row (a producer's job may have none yet, §7.4)."""
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT id FROM alert_deliveries WHERE id = ANY(%s)", (delivery_ids,)).fetchall()
        return {r[0] for r in rows}

    def counts(self) -> dict[str, int]:
        """Rows per status (every status present, zero when none)."""
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT status, count(*) FROM alert_deliveries GROUP BY status").fetchall()
        found = {status: int(n) for status, n in rows}
        return {s.value: found.get(s.value, 0) for s in DeliveryStatus}
