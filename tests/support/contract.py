"""Names from docs/contract.md that tests check against, written out here on purpose: a test that
derived them from the code could not catch the code drifting from the contract."""

RESULT_KEYS = frozenset(
    {"delivery_id", "channel", "outcome", "success", "status", "message_id", "error", "retryable", "next_attempt_at"}
)
