-- Questions analysts ask of vigil's ClickHouse tables (schema.sql).
--
-- Each query starts at a "-- name:" line and ends with a semicolon.
-- Parameters are literal example values: replace the agent_id and alert_id
-- literals with yours, and run the query in `clickhouse-client --database vigil`.
-- Tables that vigil may write twice (a redelivered batch) are read with
-- FINAL, so every window, alert and request counts once. Times are UTC.
-- Every query runs on ClickHouse 18.16 and on current versions, and is
-- tested against a real server on a small fixture (sinks/clickhouse).

-- name: agent_score_history
-- An agent's windows over the last 7 days, oldest first: how anomalous it
-- was, and how many targets it reached for the first time.
SELECT window_start, window_end, events, score, severity, cold, baseline_source, new_targets, z_new_targets
FROM windows FINAL
WHERE agent_id = 'spiffe://bank.example/agent/payments-bot-07'
  AND window_start >= now() - INTERVAL 7 DAY
ORDER BY window_start;

-- name: top_anomalous_agents_today
-- The agents with the highest window score since midnight UTC, with their
-- worst window and how many windows were critical or warning. Cold
-- windows (no baseline yet, not scored) are left out.
SELECT
    agent_id,
    any(agent_class) AS agent_class,
    max(score) AS max_score,
    argMax(window_start, score) AS worst_window,
    countIf(severity = 'critical') AS critical_windows,
    countIf(severity = 'warning') AS warning_windows,
    count() AS windows
FROM windows FINAL
WHERE window_start >= toStartOfDay(now(), 'UTC') AND cold = 0
GROUP BY agent_id
ORDER BY max_score DESC, agent_id
LIMIT 20;

-- name: first_seen_targets_this_week
-- Per agent, targets it called for the first time this week (since Monday,
-- UTC), in how many windows, and the first such window. Unscored (cold)
-- windows count 0.
SELECT
    agent_id,
    sum(new_targets) AS first_seen_targets,
    countIf(new_targets > 0) AS windows_with_new_targets,
    minIf(window_start, new_targets > 0) AS first_window
FROM windows FINAL
WHERE toDate(window_start) >= toMonday(toDate(now(), 'UTC'))
GROUP BY agent_id
HAVING first_seen_targets > 0
ORDER BY first_seen_targets DESC, agent_id;

-- name: alert_evidence
-- Why one alert fired: one row per reason, most important first, with the
-- alert's score, severity and baseline.
SELECT
    alert_id, agent_id, window_start, detected_at, kind, severity, score,
    baseline_source, baseline_windows, credential_id,
    feature, value, expected, z, contribution
FROM alerts FINAL
ARRAY JOIN
    reason_feature AS feature,
    reason_value AS value,
    reason_expected AS expected,
    reason_z AS z,
    reason_contribution AS contribution
WHERE alert_id = '3f9a6c1e5b7d4e20a8c4f1d2b6e9a0c7';

-- name: alert_window
-- The alert's whole window: every feature's value, what the baseline
-- expected, its z-score, and whether it was scored, in feature order.
SELECT agent_id, window_start, events, score, feature, value, expected, z, has(scored, feature) AS is_scored
FROM windows FINAL
ARRAY JOIN
    ['event_count', 'distinct_target_share', 'new_targets', 'new_actions', 'new_credentials',
     'new_src_addresses', 'new_to_peer_group', 'action_mix_jsd', 'deny_rate', 'error_rate',
     'bytes_out_per_event', 'bytes_in_per_event', 'latency_ms', 'amount_per_event',
     'restricted_share', 'weak_auth_share', 'denied_unfamiliar', 'new_origin_share'] AS feature,
    [event_count, distinct_target_share, new_targets, new_actions, new_credentials,
     new_src_addresses, new_to_peer_group, action_mix_jsd, deny_rate, error_rate,
     bytes_out_per_event, bytes_in_per_event, latency_ms, amount_per_event,
     restricted_share, weak_auth_share, denied_unfamiliar, new_origin_share] AS value,
    [expected_event_count, expected_distinct_target_share, expected_new_targets, expected_new_actions,
     expected_new_credentials, expected_new_src_addresses, expected_new_to_peer_group,
     expected_action_mix_jsd, expected_deny_rate, expected_error_rate, expected_bytes_out_per_event,
     expected_bytes_in_per_event, expected_latency_ms, expected_amount_per_event,
     expected_restricted_share, expected_weak_auth_share, expected_denied_unfamiliar,
     expected_new_origin_share] AS expected,
    [z_event_count, z_distinct_target_share, z_new_targets, z_new_actions, z_new_credentials,
     z_new_src_addresses, z_new_to_peer_group, z_action_mix_jsd, z_deny_rate, z_error_rate,
     z_bytes_out_per_event, z_bytes_in_per_event, z_latency_ms, z_amount_per_event,
     z_restricted_share, z_weak_auth_share, z_denied_unfamiliar, z_new_origin_share] AS z
WHERE (agent_id, window_start) IN (
    SELECT agent_id, window_start FROM alerts FINAL WHERE alert_id = '3f9a6c1e5b7d4e20a8c4f1d2b6e9a0c7');

-- name: alert_revocations
-- The revocation requests the alert caused and what became of each (the
-- latest outcome the policy engine or an analyst recorded, or pending).
SELECT request_id, action, mode, why, expires_at,
    if(latest = '', 'pending', latest) AS outcome,
    if(latest = '', '', toString(latest_at)) AS decided_at
FROM (
    SELECT request_id, action, mode, why, expires_at
    FROM revocations FINAL
    WHERE alert_id = '3f9a6c1e5b7d4e20a8c4f1d2b6e9a0c7'
) LEFT JOIN (
    SELECT request_id, argMax(outcome, decided_at) AS latest, max(decided_at) AS latest_at
    FROM revocation_outcomes FINAL
    GROUP BY request_id
) USING request_id
ORDER BY request_id;

-- name: alert_audit_entries
-- Where the alert and its revocation requests sit in the audit chain.
SELECT topic, kafka_partition, seq, record_type, record_id
FROM audit
WHERE record_id = '3f9a6c1e5b7d4e20a8c4f1d2b6e9a0c7'
   OR record_id IN (SELECT request_id FROM revocations FINAL WHERE alert_id = '3f9a6c1e5b7d4e20a8c4f1d2b6e9a0c7')
ORDER BY topic, kafka_partition, seq;

-- name: revocations_with_outcome
-- Revocation requests of the last 7 days, newest first, with their latest
-- outcome: applied, rejected, expired, restored, confirmed, or pending
-- while the policy engine has recorded none.
SELECT detected_at, agent_id, request_id, action, mode, why, expires_at,
    if(latest = '', 'pending', latest) AS outcome,
    if(latest = '', '', toString(latest_at)) AS decided_at,
    latest_by AS decided_by,
    latest_detail AS detail
FROM (
    SELECT detected_at, agent_id, request_id, action, mode, why, expires_at
    FROM revocations FINAL
    WHERE detected_at >= now() - INTERVAL 7 DAY
) LEFT JOIN (
    SELECT
        request_id,
        argMax(outcome, decided_at) AS latest,
        max(decided_at) AS latest_at,
        argMax(decided_by, decided_at) AS latest_by,
        argMax(detail, decided_at) AS latest_detail
    FROM revocation_outcomes FINAL
    GROUP BY request_id
) USING request_id
ORDER BY detected_at DESC, request_id;

-- name: audit_chain_breaks
-- Audit chain entries that do not verify: a hash that does not match the
-- entry, or a prev_hash that is not the previous entry's hash (which also
-- flags the entry after a gap). Empty while every chain is intact. The
-- sink's VerifyChain also checks the alerts and revocations tables.
SELECT topic, kafka_partition, seq, record_type, record_id,
    hash != lower(hex(SHA256(concat(
        'vigil-audit-v1\n', topic, '\n', toString(kafka_partition), '\n', toString(seq), '\n',
        toString(toUInt32(at)), '\n', prev_hash, '\n', toString(record_type), '\n', record_id, '\n',
        record, '\n')))) AS bad_hash,
    prev_hash != if(seq = 1, '0000000000000000000000000000000000000000000000000000000000000000', expected_prev) AS bad_link
FROM audit
LEFT JOIN (
    SELECT topic, kafka_partition, seq + 1 AS seq, hash AS expected_prev FROM audit
) USING (topic, kafka_partition, seq)
WHERE bad_hash OR bad_link
ORDER BY topic, kafka_partition, seq;
