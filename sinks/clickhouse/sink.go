package clickhouse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
)

// Sink writes window records, alerts, revocation requests and the audit
// chain to ClickHouse. It is safe for concurrent use: Write is called from
// several partition workers at once. Close it when done.
type Sink struct {
	conn driver.Conn
	cfg  Config
	log  *slog.Logger

	mu     sync.Mutex
	chains map[chainKey]*sync.Mutex // serialises appends to one chain
	heads  map[chainKey]Head        // each chain's head after this Sink's last append
}

var _ detector.Sink = (*Sink)(nil)

// windowColumns are the windows table's columns in insert order.
var windowColumns = func() string {
	cols := []string{"agent_id", "agent_class", "window_start", "window_end", "hour_of_week", "events",
		"score", "severity", "cold", "baseline_source", "baseline_windows", "scored"}
	for f := range features.NumFeatures {
		n := f.String()
		cols = append(cols, n, "expected_"+n, "z_"+n)
	}
	return strings.Join(cols, ", ")
}()

const (
	alertColumns = "alert_id, agent_id, agent_class, window_start, window_end, detected_at, detected_at_ms, " +
		"score, severity, kind, reason_feature, reason_value, reason_expected, reason_z, reason_contribution, " +
		"baseline_source, baseline_windows, credential_id, topic, kafka_partition, json"
	revocationColumns = "request_id, alert_id, agent_id, agent_class, window_start, window_end, detected_at, detected_at_ms, " +
		"score, severity, kind, baseline_source, baseline_windows, credential_id, action, mode, why, expires_at, " +
		"kid, signature, topic, kafka_partition, body"
)

// New connects to ClickHouse over the native protocol, creates the
// database if it is missing and applies the migrations it has not
// recorded, giving up after DialTimeout + WriteTimeout. log may be nil.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout+cfg.WriteTimeout)
	defer cancel()
	opts, err := cfg.options()
	if err != nil {
		return nil, err
	}
	// The database must exist before a connection can default to it.
	boot, err := ch.Open(opts(""))
	if err != nil {
		return nil, classify("connect", err)
	}
	err = create(ctx, boot, "CREATE DATABASE IF NOT EXISTS "+cfg.Database)
	boot.Close()
	if err != nil {
		err = cfg.diagnoseTLS(ctx, err)
		return nil, classify("create database "+cfg.Database, err)
	}
	conn, err := ch.Open(opts(cfg.Database))
	if err != nil {
		return nil, classify("connect", err)
	}
	s := wrapConn(conn, cfg, log)
	if err := s.migrate(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// Open connects to an existing vigil database to read it (VerifyChain,
// Chains, CheckHead): it creates and migrates nothing, so a user allowed
// only to read will do. It fails when the database has no audit table.
// Do not Write to the Sink it returns. log may be nil.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout+cfg.WriteTimeout)
	defer cancel()
	opts, err := cfg.options()
	if err != nil {
		return nil, err
	}
	conn, err := ch.Open(opts(cfg.Database))
	if err != nil {
		return nil, classify("connect", err)
	}
	var n uint64
	err = conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = 'audit'", cfg.Database).Scan(&n)
	if err == nil && n == 0 {
		err = errors.New("it has no audit table: is it vigil's (clickhouse.database)?")
	}
	if err != nil {
		conn.Close()
		if err := cfg.diagnoseTLS(ctx, err); detector.IsTLSConfigError(err) {
			return nil, classify("open database "+cfg.Database, err)
		}
		return nil, fmt.Errorf("clickhouse: open database %s: %w", cfg.Database, err)
	}
	return wrapConn(conn, cfg, log), nil
}

func wrapConn(conn driver.Conn, cfg Config, log *slog.Logger) *Sink {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sink{conn: conn, cfg: cfg, log: log, chains: make(map[chainKey]*sync.Mutex), heads: make(map[chainKey]Head)}
}

// diagnoseTLS returns err, or with TLS the configuration error it hides
// (detector.DiagnoseTLS: a client certificate the server refused after a
// TLS 1.3 handshake shows as a broken connection).
func (cfg Config) diagnoseTLS(ctx context.Context, err error) error {
	if !cfg.TLS.Enabled || detector.IsTLSConfigError(err) || ctx.Err() != nil {
		return err
	}
	tc, terr := cfg.TLS.config()
	if terr != nil {
		return err
	}
	if terr := detector.DiagnoseTLS(ctx, cfg.Addr[0], tc, time.Second); detector.IsTLSConfigError(terr) {
		return fmt.Errorf("%w (after: %v)", terr, err)
	}
	return err
}

// options returns the connection options for a database ("": the
// server's default), reading the password and TLS files now.
func (cfg Config) options() (func(db string) *ch.Options, error) {
	pw, err := cfg.password()
	if err != nil {
		return nil, err
	}
	tc, err := cfg.TLS.config()
	if err != nil {
		return nil, err
	}
	return func(db string) *ch.Options {
		return &ch.Options{
			Addr:        cfg.Addr,
			Auth:        ch.Auth{Database: db, Username: cfg.Username, Password: pw},
			TLS:         tc,
			DialTimeout: cfg.DialTimeout,
			Compression: &ch.Compression{Method: ch.CompressionLZ4},
			ClientInfo:  ch.ClientInfo{Products: []struct{ Name, Version string }{{Name: "vigil", Version: "1"}}},
		}
	}, nil
}

// Migrations run in every instance as it starts, and every member of a
// consumer group starts at once, so several migrators may apply the same
// step together. Each step is idempotent and checks, when it fails,
// whether a concurrent migrator made the change meanwhile; a version is
// recorded only after its step is done, and recording it twice is
// harmless (schema_migrations collapses rows by version, read with FINAL).

// create runs stmt, a CREATE … IF NOT EXISTS. Should it fail while a
// concurrent migrator creates the same object (ClickHouse of early 2018
// answered a concurrent CREATE DATABASE with code 76, its issue 2383), it
// is run once more: IF NOT EXISTS makes the second run its own re-check,
// which succeeds if the object exists by then.
func create(ctx context.Context, conn driver.Conn, stmt string) error {
	err := conn.Exec(ctx, stmt)
	if err == nil {
		return nil
	}
	select {
	case <-ctx.Done():
		return err
	case <-time.After(100 * time.Millisecond):
	}
	if conn.Exec(ctx, stmt) == nil {
		return nil
	}
	return err
}

// hasColumn reports whether the table has column c.
func (s *Sink) hasColumn(ctx context.Context, c column) (bool, error) {
	var n uint64
	err := s.conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = ? AND name = ?",
		c.table, c.name).Scan(&n)
	return n > 0, err
}

// addColumn adds c unless the table has it (a migration interrupted after
// some of its columns). ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS:
// when a concurrent migrator adds c between the check and the ALTER, the
// ALTER fails (code 44, "column with this name already exists", or 179)
// and c is looked up again; found, it is there as this migrator wanted.
func (s *Sink) addColumn(ctx context.Context, c column) error {
	if has, err := s.hasColumn(ctx, c); err != nil || has {
		return err
	}
	err := s.conn.Exec(ctx, c.alter())
	if err == nil {
		return nil
	}
	if has, herr := s.hasColumn(ctx, c); herr == nil && has {
		s.log.Debug("clickhouse: column added by a concurrent migrator", "database", s.cfg.Database, "table", c.table, "column", c.name, "err", err)
		return nil
	}
	return err
}

// migrate applies the migrations not recorded in schema_migrations, in
// order, recording each after its statements succeeded. It is safe to run
// in several instances at once (see create and addColumn).
func (s *Sink) migrate(ctx context.Context) error {
	if err := create(ctx, s.conn, createMigrations); err != nil {
		return classify("create schema_migrations", err)
	}
	applied := make(map[int]bool)
	rows, err := s.conn.Query(ctx, "SELECT version FROM schema_migrations FINAL")
	if err != nil {
		return classify("read schema_migrations", err)
	}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return classify("read schema_migrations", err)
		}
		applied[int(v)] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return classify("read schema_migrations", err)
	}
	latest := 0
	for _, m := range migrations {
		latest = max(latest, m.version)
		if applied[m.version] {
			continue
		}
		for _, stmt := range m.stmts {
			if err := create(ctx, s.conn, stmt); err != nil {
				return classify(fmt.Sprintf("migration %d (%s)", m.version, m.name), err)
			}
		}
		for _, c := range m.columns {
			if err := s.addColumn(ctx, c); err != nil {
				return classify(fmt.Sprintf("migration %d (%s)", m.version, m.name), err)
			}
		}
		if err := s.recordMigration(ctx, m); err != nil {
			return classify(fmt.Sprintf("record migration %d", m.version), err)
		}
		s.log.Info("clickhouse: applied migration", "database", s.cfg.Database, "version", m.version, "name", m.name)
	}
	for v := range applied {
		if v > latest {
			s.log.Warn("clickhouse: the database has migrations this vigil does not know; it is older than the schema",
				"database", s.cfg.Database, "version", v, "known", latest)
		}
	}
	return nil
}

func (s *Sink) recordMigration(ctx context.Context, m migration) error {
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	defer batch.Close()
	if err := batch.Append(uint32(m.version), m.name, time.Now().UTC()); err != nil {
		return err
	}
	return batch.Send()
}

// Name implements detector.Sink.
func (s *Sink) Name() string { return "clickhouse" }

// Write implements detector.Sink: it inserts b's window records, then its
// alerts and revocation requests not yet in the partition's audit chain,
// then their chain entries. Dead letters are not stored. Errors from
// connections and timeouts are returned as they are (retry); errors that
// retrying cannot fix (the schema or a value is rejected, authentication
// fails) wrap detector.ErrPermanent.
func (s *Sink) Write(ctx context.Context, b detector.Batch) error {
	if len(b.Windows)+len(b.Alerts)+len(b.Revocations)+len(b.Outcomes) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	if len(b.Windows) > 0 {
		if err := s.insertWindows(ctx, b.Windows); err != nil {
			return classify("insert windows", err)
		}
	}
	if len(b.Outcomes) > 0 {
		if err := s.insertOutcomes(ctx, b.Outcomes); err != nil {
			return classify("insert revocation_outcomes", err)
		}
	}
	if len(b.Alerts)+len(b.Revocations) > 0 {
		return s.appendRecords(ctx, &b)
	}
	return nil
}

// Close closes the connections. Write must not be called after.
func (s *Sink) Close() error { return s.conn.Close() }

func (s *Sink) insertWindows(ctx context.Context, ws []detector.WindowRecord) error {
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO windows ("+windowColumns+")")
	if err != nil {
		return err
	}
	defer batch.Close()
	row := make([]any, 0, 12+3*features.NumFeatures)
	for i := range ws {
		w := &ws[i]
		scored := make([]string, 0, features.NumFeatures)
		for f := range features.NumFeatures {
			if w.Scored[f] {
				scored = append(scored, f.String())
			}
		}
		row = append(row[:0], w.AgentID, w.AgentClass, time.Unix(0, w.Start).UTC(), time.Unix(0, w.End).UTC(),
			uint8(w.HourOfWeek), uint64(max(w.Events, 0)), w.Score, w.Severity.String(), boolByte(w.Cold),
			w.Source, uint32(max(w.BaselineWindows, 0)), scored)
		for f := range features.NumFeatures {
			row = append(row, w.Value[f], w.Expected[f], w.Z[f])
		}
		if err := batch.Append(row...); err != nil {
			return err
		}
	}
	return batch.Send()
}

func (s *Sink) insertAlerts(ctx context.Context, topic string, partition int, as []*detector.Alert, records []record) error {
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO alerts ("+alertColumns+")")
	if err != nil {
		return err
	}
	defer batch.Close()
	for i, a := range as {
		n := len(a.Reasons)
		feat := make([]string, n)
		val, exp, z, contrib := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
		for j, r := range a.Reasons {
			feat[j], val[j], exp[j], z[j], contrib[j] = r.Feature, r.Value, r.Expected, r.Z, r.Contribution
		}
		det := a.DetectedAt.UTC()
		if err := batch.Append(a.AlertID, a.AgentID, a.AgentClass, a.WindowStart.UTC(), a.WindowEnd.UTC(),
			det, uint16(det.Nanosecond()/1e6), a.Score, a.Severity.String(), a.Kind,
			feat, val, exp, z, contrib, a.Baseline.Source, uint32(max(a.Baseline.Windows, 0)), firstOr(a.Credentials),
			topic, uint32(partition), string(records[i].body)); err != nil {
			return err
		}
	}
	return batch.Send()
}

func (s *Sink) insertRevocations(ctx context.Context, topic string, partition int, rs []*detector.Revocation, records []record) error {
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO revocations ("+revocationColumns+")")
	if err != nil {
		return err
	}
	defer batch.Close()
	for i, r := range rs {
		det := r.DetectedAt.UTC()
		if err := batch.Append(r.RequestID, r.AlertID, r.AgentID, r.AgentClass, r.WindowStart.UTC(), r.WindowEnd.UTC(),
			det, uint16(det.Nanosecond()/1e6), r.Score, r.Severity.String(), r.Kind,
			r.Baseline.Source, uint32(max(r.Baseline.Windows, 0)), r.CredentialID, r.Action, r.Mode, r.Why,
			r.ExpiresAt.UTC(), r.KeyID, r.Signature, topic, uint32(partition), string(records[i].body)); err != nil {
			return err
		}
	}
	return batch.Send()
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// classify wraps err from operation op, adding detector.ErrPermanent when
// retrying cannot fix it.
func classify(op string, err error) error {
	if detector.IsTLSConfigError(err) {
		return fmt.Errorf("clickhouse: %s: TLS: %w: %s (%w)", op, err, detector.TLSConfigFix("clickhouse.tls", err), detector.ErrPermanent)
	}
	if permanent(err) {
		return fmt.Errorf("clickhouse: %s: %w (%w)", op, err, detector.ErrPermanent)
	}
	return fmt.Errorf("clickhouse: %s: %w", op, err)
}

// permanentCodes are the server's error codes that retrying the same
// insert cannot fix: the schema, a value or the credentials are wrong.
// Other server errors (too many parts, memory limit, timeouts, a read-only
// replica, …) pass with time and are retried.
var permanentCodes = map[int32]bool{
	6: true, 8: true, 10: true, 15: true, 16: true, 20: true, 26: true, 27: true, // parse, missing or duplicate column
	36: true, 41: true, 43: true, 44: true, 46: true, 47: true, 48: true, 50: true, // bad argument, type or identifier
	53: true, 60: true, 62: true, 69: true, 70: true, 73: true, 81: true, // type mismatch, unknown table, syntax, unknown database
	101: true, 115: true, 117: true, 130: true, 131: true, 190: true, // protocol, setting, incorrect data
	164: true, 192: true, 193: true, 194: true, 195: true, 291: true, 497: true, 516: true, // read-only user, authentication, access
}

// permanent reports whether err is one that retrying cannot fix. Network
// errors, timeouts and cancellations are not.
func permanent(err error) bool {
	var ex *ch.Exception
	if errors.As(err, &ex) {
		return permanentCodes[ex.Code]
	}
	return errors.Is(err, ch.ErrBatchInvalid) || errors.Is(err, ch.ErrUnsupportedServerRevision)
}

// firstOr returns the first of s, or "".
func firstOr(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// insertOutcomes records what became of vigil's enforced requests, as the
// closed loop saw it, beside the policy engine's own outcomes
// (decided_by vigil; detail: time to effect and allowed uses after the
// request, as JSON). Idempotent: ReplacingMergeTree by request, time and
// outcome.
func (s *Sink) insertOutcomes(ctx context.Context, os []detector.Outcome) error {
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO revocation_outcomes (request_id, outcome, decided_at, decided_by, detail)")
	if err != nil {
		return err
	}
	defer batch.Close()
	for _, o := range os {
		tte := int64(-1)
		if o.TimeToEffect >= 0 {
			tte = o.TimeToEffect.Milliseconds()
		}
		detail, _ := json.Marshal(struct {
			AgentID      string `json:"agent_id"`
			TimeToEffect int64  `json:"time_to_effect_ms"`
			AllowedAfter int    `json:"allowed_after"`
		}{o.AgentID, tte, o.AllowedAfter})
		if err := batch.Append(o.RequestID, o.Outcome, o.DecidedAt.UTC(), "vigil", string(detail)); err != nil {
			return err
		}
	}
	return batch.Send()
}
