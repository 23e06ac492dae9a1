// Package clickhouse is vigil's ClickHouse sink: where analysts query what
// vigil saw and did. It writes, over ClickHouse's native protocol
// (clickhouse-go/v2), one row per agent window (feature values, what the
// baseline expected, z-scores, score), one per alert, one per revocation
// request, and a tamper-evident audit chain over the alerts and requests.
//
// New creates the database and applies versioned migrations, recorded in
// schema_migrations; every step is idempotent and tolerates a concurrent
// migrator making the same change, so every instance may start at once. Schema returns the same DDL for `vigil schema clickhouse` and
// deploy/clickhouse/schema.sql; deploy/clickhouse/queries.sql holds the
// questions analysts ask. The schema is valid on ClickHouse 18.16 and on
// current versions: no DateTime64, Map, TTL, CODEC or LowCardinality, and
// inserts name their columns.
//
// Writes are idempotent under redelivery, as detector.Sink requires: the
// tables are ReplacingMergeTree sorted by each row's stable id (agent and
// window start; alert_id; request_id), so a batch written twice collapses
// to one row per id when parts merge, and readers use FINAL or argMax
// meanwhile. Alerts and requests already in the audit chain are not written
// again at all, so those tables and the chain hold them once even before a
// merge.
//
// VerifyChain recomputes a chain and says how it is broken (ChainError);
// Heads are the chains' last entries as this Sink wrote them, which vigil
// run publishes outside ClickHouse, and CheckHead checks a chain against
// one. Open connects to an existing database to verify it, creating and
// migrating nothing.
//
// Errors that retrying cannot fix (the schema or a value is rejected,
// authentication fails, TLS fails for a reason the configuration causes:
// see detector.IsTLSConfigError) wrap detector.ErrPermanent; connection
// errors and timeouts do not, and the caller retries with backoff. TLS
// (tls.enabled, the server's tcp_port_secure) takes a CA file and an
// optional client certificate; the client key and the password file must
// not be accessible to other users (detector.CheckSecretFile).
//
// The package does not store dead letters (they go to their Kafka topic),
// does not write revocation outcomes (the policy engine or an analyst
// does, into revocation_outcomes), and does not manage clusters: on a
// replicated or distributed setup, create the tables with Replicated
// engines yourself and point vigil at one replica, since the audit chain's
// head is read back from the server it was written to.
package clickhouse
