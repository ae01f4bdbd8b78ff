-- alert_worker schema: idempotent, applied by `alert-worker migrate` and by main() at start-up.
-- The advisory lock makes concurrent migrations from several starting workers safe.
SELECT pg_advisory_xact_lock(823746512);

CREATE TABLE IF NOT EXISTS alert_deliveries (
    id                  text PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 255),
    alert_id            text NULL,
    channel             text NOT NULL CHECK (channel IN ('email', 'slack', 'sms')),
    recipient           text NOT NULL,
    recipient_hash      text NOT NULL,
    dedup_key           text NULL UNIQUE,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'in_progress', 'delivered', 'failed', 'poison')),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    deferrals           integer NOT NULL DEFAULT 0 CHECK (deferrals >= 0),
    deferred_since      timestamptz NULL,
    claim_token         uuid NULL,
    next_attempt_at     timestamptz NULL,
    last_attempt_at     timestamptz NULL,
    delivered_at        timestamptz NULL,
    poison_at           timestamptz NULL,
    error_message       text NULL,
    provider_message_id text NULL,
    queue               text NOT NULL DEFAULT 'alerts',
    payload             jsonb NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The RQ worker that made the current claim (CONTRACT §6.1): the sweep reclaims a row whose claimant
-- is no longer alive after the job timeout instead of the much longer stuck threshold.
ALTER TABLE alert_deliveries ADD COLUMN IF NOT EXISTS claimed_by text NULL;

-- The delivery whose message carried this one (CONTRACT §8, alert storms); NULL for a message of its own.
ALTER TABLE alert_deliveries ADD COLUMN IF NOT EXISTS delivered_via text NULL;

-- The sweep scans only rows that can still move; the poison list reads newest first.
CREATE INDEX IF NOT EXISTS alert_deliveries_open_idx
    ON alert_deliveries (status, (COALESCE(next_attempt_at, updated_at)))
    WHERE status IN ('pending', 'in_progress');
CREATE INDEX IF NOT EXISTS alert_deliveries_poison_idx
    ON alert_deliveries (poison_at DESC) WHERE status = 'poison';
CREATE INDEX IF NOT EXISTS alert_deliveries_alert_id_idx
    ON alert_deliveries (alert_id) WHERE alert_id IS NOT NULL;

-- Worker-wide values shared through the database (the recipient-hash secret when not set by env).
CREATE TABLE IF NOT EXISTS alert_worker_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The operator's overview (`alert-worker status` with no id, CONTRACT §6.4) and the due-pending gauge.
-- Oldest due pending delivery: one ordered read of this partial index (its expression matches the query).
CREATE INDEX IF NOT EXISTS alert_deliveries_due_pending_idx
    ON alert_deliveries ((COALESCE(next_attempt_at, created_at))) WHERE status = 'pending';
-- Counts by status and channel: an index-only range scan for the open statuses; the extended statistics
-- make the planner's per-(status, channel) estimate of the terminal statuses accurate on large tables.
CREATE INDEX IF NOT EXISTS alert_deliveries_status_channel_idx ON alert_deliveries (status, channel);
CREATE STATISTICS IF NOT EXISTS alert_deliveries_status_channel_stats (mcv) ON status, channel
    FROM alert_deliveries;

-- Held deliveries of one recipient, oldest first (CONTRACT §8): what the next message to it carries.
CREATE INDEX IF NOT EXISTS alert_deliveries_held_idx
    ON alert_deliveries (channel, recipient_hash, created_at) WHERE status = 'pending';

-- Recipients a provider said can never receive (CONTRACT §6.2): later deliveries are poisoned unsent.
CREATE TABLE IF NOT EXISTS alert_suppressions (
    channel            text NOT NULL CHECK (channel IN ('email', 'slack', 'sms')),
    recipient_hash     text NOT NULL,
    recipient          text NOT NULL,
    reason             text NOT NULL,
    source_delivery_id text NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, recipient_hash)
);

-- Attempts that may have reached the provider without an answer: when the first such attempt began,
-- so the next SMS attempt can ask Twilio whether the message exists before sending it again.
CREATE TABLE IF NOT EXISTS alert_unknown_outcomes (
    delivery_id        text PRIMARY KEY REFERENCES alert_deliveries (id) ON DELETE CASCADE,
    channel            text NOT NULL,
    attempt_started_at timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);
-- The SHA-256 of the text an unknown attempt sent when it carried held alerts (§8): what its look-up matches.
ALTER TABLE alert_unknown_outcomes ADD COLUMN IF NOT EXISTS sent_sha256 text NULL;
-- The carrier whose message that was, when this delivery was carried (§8): its look-up may find that message.
ALTER TABLE alert_unknown_outcomes ADD COLUMN IF NOT EXISTS carried_by text NULL;

-- No two deliveries hold one provider message id (CONTRACT §7.1): an SMS look-up can never take another
-- delivery's message as its own. Rows that already share one (from before this index) keep the id on the
-- first delivered; the others lose it, and their error_message says which delivery holds it and that this
-- one may never have been sent.
DO $$
BEGIN
    IF to_regclass('alert_deliveries_provider_message_id_key') IS NULL THEN
        UPDATE alert_deliveries d
           SET error_message = 'provider_message_id ' || d.provider_message_id || ' is also delivery '
                               || first.id || '''s: this delivery may never have been sent',
               provider_message_id = NULL
          FROM (SELECT DISTINCT ON (provider_message_id) id, provider_message_id
                  FROM alert_deliveries WHERE provider_message_id IS NOT NULL
                 ORDER BY provider_message_id, delivered_at NULLS LAST, id) first
         WHERE d.provider_message_id = first.provider_message_id AND d.id <> first.id;
    END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS alert_deliveries_provider_message_id_key
    ON alert_deliveries (provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Provider-added e-mail suppressions the rules of CONTRACT §7.2 never add (an earlier release suppressed on
-- any 5.1.x, on replies after DATA and on replies naming the sender): lifted at every migrate, so an upgrade
-- sends to those recipients again. Kept: a reply to RCPT TO with 5.1.1, 5.1.2, 5.1.10 or 5.2.1 not naming
-- the sender (reason `smtp recipient refused [CODE] 5.x.y: text`), and every entry an operator added.
DELETE FROM alert_suppressions
 WHERE channel = 'email' AND source_delivery_id IS NOT NULL
   AND (reason !~ '^smtp recipient refused( -?[0-9]+| unparseable reply)? 5\.(1\.(1|2|10)|2\.1)(:|$)'
        OR reason ~* '\msender\M');
