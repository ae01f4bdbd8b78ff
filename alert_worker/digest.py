"""Alert storms (docs/contract.md §8): held deliveries, and the one message that carries them.

A delivery deferred by its recipient's per-recipient limit or by its destination's cooldown is *held* for
its channel and normalized recipient (``recipient_hash``): it stays ``pending`` with ``next_attempt_at``
set and an ``error_message`` starting with one of ``HELD_ERROR_PREFIXES`` (that is how the database, the
overview and ``status ID`` tell a held row from any other deferral). The next message sent to that channel
and recipient carries the held deliveries, oldest first, at most ``ALERT_DIGEST_MAX_ITEMS`` including the
carrier; each carried row ends ``delivered`` with ``delivered_via`` = the carrier's id.

The texts here are pure: one function per channel shape, each listing every alert the message carries,
the carrier first. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from alert_worker.models import Message

DEFAULT_MAX_ITEMS = 50
HELD_ERROR_PREFIXES = ("rate_limited: recipient limit", "rate_limited: cooldown")
HELD_LIMITS = frozenset({"recipient", "cooldown"})  # what a deferral must be for its row to be held
# A pending row is held when its last deferral was one of these (no parameters: usable in any statement).
HELD_SQL = (
    "(status = 'pending' AND (error_message LIKE 'rate_limited: recipient limit%%' "
    "OR error_message LIKE 'rate_limited: cooldown%%'))"
)
CARRIED_HEADER = "X-Alert-Carried-Ids"
# A carried delivery whose carrier's send had an unknown outcome: pending, due and not held (no other message
# carries it); its own job ends it (an SMS looks the digest up first), docs/channels.md.
CARRIED_UNKNOWN_PREFIX = "outcome_unknown: carried by "
_SAFE_ID = re.compile(r"[A-Za-z0-9._:@+/=-]")
SUBJECT_FALLBACK_CHARS = 60


def is_held(status: str, error_message: str | None) -> bool:
    """Whether a row in this state is held for its recipient (``status ID`` shows it as held)."""
    return status == "pending" and (error_message or "").startswith(HELD_ERROR_PREFIXES)


def items(message: Message) -> list[Message]:
    """Every alert one message carries: the carrier first, then the carried ones, oldest first."""
    return [message, *message.carried]


def headline(message: Message) -> str:
    """An alert's one-line title: its subject, else the start of its body."""
    if message.subject:
        return message.subject
    first = " ".join(message.body.split())
    return first if len(first) <= SUBJECT_FALLBACK_CHARS else first[: SUBJECT_FALLBACK_CHARS - 1] + "…"


def count_line(n: int) -> str:
    return f"{n} alerts" if n != 1 else "1 alert"


def fit_listing(head: str, entries: Sequence[str], limit: int, *, sep: str, cost: Callable[[str], int] = len) -> str:
    """``head`` then as many whole ``entries`` as fit in ``limit`` (by ``cost``), then "and K more" when cut.

    Each entry is kept only if the "and K more" that may have to follow it fits too, so the result never
    exceeds ``limit``. The first entry is always shown (cut with a visible ``…`` if it alone is too long).
    """
    total = len(entries)
    out = head
    for i, entry in enumerate(entries):
        more = f"{sep}and {total - i - 1} more" if i < total - 1 else ""
        if cost(out + sep + entry + more) <= limit:
            out += sep + entry
            continue
        if i == 0:
            cut = entry
            while cut and cost(out + sep + cut + "…" + more) > limit:
                cut = cut[: max(0, len(cut) - max(1, len(cut) // 8))]
            return out + sep + cut + "…" + more
        return out + f"{sep}and {total - i} more"
    return out


def sms_digest(message: Message, limit: int, cost: Callable[[str], int]) -> str:
    """``N alerts:`` then one subject per line, cut to ``limit`` with "and K more"."""
    listed = items(message)
    return fit_listing(f"{count_line(len(listed))}:", [f"- {headline(m)}" for m in listed], limit, sep="\n", cost=cost)


def email_digest_subject(message: Message) -> str:
    """``[N alerts] <the carrier's subject>``: a mail client's list says how many alerts at a glance."""
    listed = items(message)
    return f"[{count_line(len(listed))}] {headline(message)}"


def _email_intro(n: int) -> str:
    return f"This message carries {count_line(n)} (held back by a rate limit or a cooldown)."


def _email_section_head(i: int, n: int, m: Message) -> str:
    return f"--- Alert {i} of {n}: {m.subject or '(no subject)'}\nDelivery: {m.delivery_id}\n\n"


def email_digest_body(message: Message) -> str:
    """One section per alert: its subject, its delivery id and its body."""
    listed = items(message)
    n = len(listed)
    parts = [_email_intro(n)]
    for i, m in enumerate(listed, start=1):
        parts.append(_email_section_head(i, n, m) + m.body)
    return "\n\n".join(parts) + "\n"


def email_carried_fit(message: Message, carried: Sequence[Message], limit_bytes: int) -> int:
    """How many of ``carried`` (oldest first) fit with ``message`` in one digest body of at most
    ``limit_bytes`` UTF-8 bytes, every alert in full (its body is never cut to fit: the rest stay held)."""

    def size(text: str) -> int:
        return len(text.encode("utf-8", "surrogatepass"))

    listed = [message, *carried]
    bodies = [size(m.body) for m in listed]
    fit = 0
    for k in range(1, len(carried) + 1):
        n = k + 1
        total = size(_email_intro(n)) + 2 * n + 1  # the "\n\n" between the n + 1 parts, the final "\n"
        total += sum(size(_email_section_head(i, n, m)) + bodies[i - 1] for i, m in enumerate(listed[:n], 1))
        if total > limit_bytes:
            break
        fit = k
    return fit


def carried_ids_header(message: Message) -> str:
    """The carried ids (not the carrier's) for ``X-Alert-Carried-Ids``: header-safe, comma-separated.

    Any character outside a conservative set is percent-encoded, so no id can bring CR/LF or a comma.
    """
    return ", ".join(
        "".join(ch if _SAFE_ID.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in m.delivery_id)
        for m in message.carried
    )


def slack_entry(m: Message, escape: Callable[[str], str]) -> str:
    """One alert in the Slack digest's text (the notification fallback): its subject, its body and its
    delivery id, with no markup an ``*`` or ``_`` in the alert could break (the blocks carry the layout)."""
    title = f"{escape(m.subject)}\n" if m.subject else ""
    return f"{title}{escape(m.body)}\nid: {escape(m.delivery_id)}"


def slack_digest_head(n: int) -> str:
    return count_line(n)


def slack_digest(
    message: Message, limit: int, *, escape: Callable[[str], str], cost: Callable[[str], int] = len
) -> str:
    """``N alerts`` then, per alert, its subject, its body and its delivery id (the channel carries
    only what fits in full; "and K more" is a last resort that a carrying message never needs)."""
    listed = items(message)
    entries = [slack_entry(m, escape) for m in listed]
    return fit_listing(slack_digest_head(len(listed)), entries, limit, sep="\n\n", cost=cost)
