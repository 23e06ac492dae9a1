package clickhouse

import (
	"fmt"
	"strings"
)

// migration is one versioned step of the schema. Its statements are
// CREATE TABLE IF NOT EXISTS and its columns are added only if missing, so
// that instances starting at once, or a step interrupted half-way, are
// harmless: a step is recorded in schema_migrations only after all its
// statements succeeded, and is run again otherwise (Sink.migrate).
// Statements name tables without a database: they run on a connection
// whose default database is the configured one.
//
// A released migration is never edited: a schema change is a new migration
// (ALTER TABLE … ADD COLUMN, guarded for idempotency), appended to
// migrations.
type migration struct {
	version int
	name    string
	stmts   []string
	columns []column // added after stmts, each only if missing
}

// column is one column a migration adds to an existing table. ClickHouse
// 18.16 has no ADD COLUMN IF NOT EXISTS, so the sink looks the column up in
// system.columns first.
type column struct {
	table, name, typ, after string
}

func (c column) alter() string {
	return fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s AFTER %s", c.table, c.name, c.typ, c.after)
}

// createMigrations is the bookkeeping table, created before any migration.
const createMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC')
) ENGINE = ReplacingMergeTree
ORDER BY version`

// windowFeatures are the feature columns of the windows table as migration
// 1 created them, in features.Feature order. Frozen: a new feature needs a
// new migration that adds its columns (a test compares this list with the
// features package).
var windowFeatures = []string{
	"event_count", "distinct_target_share", "new_targets", "new_actions", "new_credentials",
	"new_src_addresses", "new_to_peer_group", "action_mix_jsd", "deny_rate", "error_rate",
	"bytes_out_per_event", "bytes_in_per_event", "latency_ms", "amount_per_event",
	"restricted_share", "weak_auth_share",
}

// windowFeaturesV2 are the feature columns migration 2 added, in
// features.Feature order after windowFeatures. Frozen too.
var windowFeaturesV2 = []string{"denied_unfamiliar"}

// windowFeaturesV3 are the feature columns migration 3 added, after
// windowFeaturesV2. Frozen too.
var windowFeaturesV3 = []string{"new_origin_share"}

const severityEnum = `Enum8('none' = 0, 'info' = 1, 'warning' = 2, 'critical' = 3)`

// The schema avoids what ClickHouse 18.16 lacks (DateTime64, Map, TTL,
// CODEC, LowCardinality without a setting): times are DateTime('UTC') in
// seconds, with a separate milliseconds column where they matter. Tables
// that vigil may write twice (a batch is redelivered after a failed or
// unacknowledged Write) are ReplacingMergeTree with a sort key that is, or
// is determined by, the row's stable id, and a partition key computed from
// that id's parts: duplicates collapse on merge, and readers use FINAL (or
// argMax) to see every row once before then.
var migrations = []migration{{
	version: 1,
	name:    "windows, alerts, revocations, revocation_outcomes, audit",
	stmts: []string{
		`-- One row per agent and closed window. Per feature: the observed
-- value in readable units (column named after the feature), what
-- the baseline expected (expected_…) and the z-score (z_…).
-- scored names the features the model scored (the others read 0).
CREATE TABLE IF NOT EXISTS windows (
    agent_id String,
    agent_class String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    hour_of_week UInt8,
    events UInt64,
    score Float64,
    severity ` + severityEnum + `,
    cold UInt8,
    baseline_source String,
    baseline_windows UInt32,
    scored Array(String),
` + featureColumns(windowFeatures) + `
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (agent_id, window_start)`,
		`-- Alert contract v1, one row per alert_id. The sort key leads with
-- agent and window for analysts, and alert_id is a hash of agent,
-- window and kind, so the key still identifies the alert. Reasons
-- are parallel arrays, most important first, and json is the alert as
-- vigil emitted it (the record the audit chain hashes).
CREATE TABLE IF NOT EXISTS alerts (
    alert_id String,
    agent_id String,
    agent_class String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    detected_at DateTime('UTC'),
    detected_at_ms UInt16,
    score Float64,
    severity ` + severityEnum + `,
    kind String,
    reason_feature Array(String),
    reason_value Array(Float64),
    reason_expected Array(Float64),
    reason_z Array(Float64),
    reason_contribution Array(Float64),
    baseline_source String,
    baseline_windows UInt32,
    credential_id String,
    topic String,
    kafka_partition UInt32,
    json String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (agent_id, window_start, alert_id)`,
		`-- Signed revocation requests, one row per request_id (a hash of
-- alert_id and action). body is the signed JSON, byte for byte:
-- detector.VerifyRevocation checks it.
CREATE TABLE IF NOT EXISTS revocations (
    request_id String,
    alert_id String,
    agent_id String,
    agent_class String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    detected_at DateTime('UTC'),
    detected_at_ms UInt16,
    score Float64,
    severity ` + severityEnum + `,
    kind String,
    baseline_source String,
    baseline_windows UInt32,
    credential_id String,
    action String,
    mode String,
    why String,
    expires_at DateTime('UTC'),
    kid String,
    signature String,
    topic String,
    kafka_partition UInt32,
    body String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (agent_id, window_start, request_id)`,
		`-- What became of a revocation request, written by the policy
-- engine or an analyst, never by vigil: e.g. INSERT INTO
-- revocation_outcomes (request_id, outcome, decided_at, decided_by,
-- detail) VALUES ('…', 'applied', now(), 'policy-engine', '').
-- Outcomes: applied, rejected, expired, restored, confirmed. A
-- request may collect several over time, the latest counts.
CREATE TABLE IF NOT EXISTS revocation_outcomes (
    request_id String,
    outcome String,
    decided_at DateTime('UTC'),
    decided_by String,
    detail String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(decided_at)
ORDER BY (request_id, decided_at, outcome)`,
		`-- The audit chain: one hash chain per Kafka topic and partition
-- over the alerts and revocation requests vigil emitted, in the
-- order it emitted them. Entry seq (from 1) holds the record and
-- hash = hex(SHA-256 of "vigil-audit-v1", topic, kafka_partition,
-- seq, at (Unix seconds), prev_hash, record_type, record_id and
-- record, each followed by a newline), prev_hash being the hash
-- of entry seq-1 (64 zeros for the first). Plain MergeTree: the
-- sink never appends a record twice, and nothing collapses rows
-- behind a verifier's back.
CREATE TABLE IF NOT EXISTS audit (
    topic String,
    kafka_partition UInt32,
    seq UInt64,
    record_type Enum8('alert' = 1, 'revocation' = 2),
    record_id String,
    at DateTime('UTC'),
    prev_hash String,
    hash String,
    record String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (topic, kafka_partition, seq)`,
	},
}, {
	version: 2,
	name:    "windows: denied_unfamiliar",
	columns: featureColumnsAfter(windowFeatures, windowFeaturesV2),
}, {
	version: 3,
	name:    "windows: new_origin_share",
	columns: featureColumnsAfter(windowFeaturesV2, windowFeaturesV3),
}}

// featureColumnsAfter returns the windows table's columns for the features
// named, placed after those of the features before. Rows written before
// read 0, as for a feature not scored.
func featureColumnsAfter(before, names []string) []column {
	var out []column
	after := "z_" + before[len(before)-1]
	for _, n := range names {
		for _, c := range []string{n, "expected_" + n, "z_" + n} {
			out = append(out, column{table: "windows", name: c, typ: "Float64 DEFAULT 0", after: after})
			after = c
		}
	}
	return out
}

func featureColumns(names []string) string {
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteString(",\n")
		}
		fmt.Fprintf(&b, "    %[1]s Float64,\n    expected_%[1]s Float64,\n    z_%[1]s Float64", n)
	}
	return b.String()
}

// DefaultDatabase is the database Schema creates and Config defaults to.
const DefaultDatabase = "vigil"

// Schema returns vigil's ClickHouse DDL for database "vigil", in the order
// vigil applies it: the database, the schema_migrations table, then every
// migration. It is what `vigil schema clickhouse` prints and
// deploy/clickhouse/schema.sql holds; apply it with
// `clickhouse-client --multiquery < schema.sql`. It does not record the
// migrations in schema_migrations: vigil does that when it starts, running
// them again harmlessly.
func Schema() string {
	var b strings.Builder
	b.WriteString("-- vigil ClickHouse schema, generated by `vigil schema clickhouse`: do not edit.\n")
	b.WriteString("-- Valid on ClickHouse 18.16 and current versions. Apply with\n")
	b.WriteString("--   clickhouse-client --multiquery < schema.sql\n")
	b.WriteString("-- vigil applies the same migrations itself when it starts (sinks/clickhouse).\n\n")
	fmt.Fprintf(&b, "CREATE DATABASE IF NOT EXISTS %s;\n\nUSE %s;\n\n", DefaultDatabase, DefaultDatabase)
	b.WriteString(createMigrations + ";\n")
	for _, m := range migrations {
		fmt.Fprintf(&b, "\n-- migration %d: %s\n", m.version, m.name)
		for _, s := range m.stmts {
			b.WriteString("\n" + s + ";\n")
		}
		if len(m.columns) > 0 {
			b.WriteString("\n-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: on a database that has\n")
			b.WriteString("-- these columns already, these statements fail and can be skipped.\n")
		}
		for _, c := range m.columns {
			b.WriteString("\n" + c.alter() + ";\n")
		}
	}
	return b.String()
}
