package clickhouse

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

var update = flag.Bool("update", false, "rewrite deploy/clickhouse/schema.sql from Schema()")

const schemaFile = "../../deploy/clickhouse/schema.sql"

// deploy/clickhouse/schema.sql is Schema()'s output, never edited by hand.
func TestSchemaFileIsGenerated(t *testing.T) {
	if *update {
		if err := os.WriteFile(schemaFile, []byte(Schema()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != Schema() {
		t.Errorf("%s differs from Schema(): run `go test ./sinks/clickhouse -run TestSchemaFileIsGenerated -update`", schemaFile)
	}
}

// The migrations' feature columns are frozen; a new feature needs a new
// migration, and this test says so.
func TestWindowFeatureColumnsCoverFeatures(t *testing.T) {
	cols := append(append(slices.Clone(windowFeatures), windowFeaturesV2...), windowFeaturesV3...)
	if len(cols) != int(features.NumFeatures) {
		t.Fatalf("windows table has %d feature columns, features has %d: add a migration for the new ones", len(cols), features.NumFeatures)
	}
	for i, n := range cols {
		if got := features.Feature(i).String(); got != n {
			t.Errorf("feature %d is %q, the windows table's column %q", i, got, n)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		edit  func(*Config)
		field string
	}{
		{func(c *Config) { c.Addr = nil }, "clickhouse.addr"},
		{func(c *Config) { c.Addr = []string{"localhost"} }, "clickhouse.addr"},
		{func(c *Config) { c.Database = "vigil; DROP TABLE x" }, "clickhouse.database"},
		{func(c *Config) { c.Username = "" }, "clickhouse.username"},
		{func(c *Config) { c.PasswordFile, c.PasswordEnv = "f", "E" }, "clickhouse.password_file"},
		{func(c *Config) { c.DialTimeout = 0 }, "clickhouse.dial_timeout"},
		{func(c *Config) { c.WriteTimeout = 0 }, "clickhouse.write_timeout"},
		{func(c *Config) { c.TLS.CAFile = "ca.pem" }, "clickhouse.tls.enabled"},
	} {
		c := DefaultConfig()
		tc.edit(&c)
		var ce *detector.ConfigError
		if err := c.Validate(); !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("%+v: error %v, want one naming %s", c, err, tc.field)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("DefaultConfig: %v", err)
	}
}

func TestPasswordFromFileOrEnv(t *testing.T) {
	file := t.TempDir() + "/pw"
	if err := os.WriteFile(file, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VIGIL_TEST_CH_PASSWORD", "fr0m-env")
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, ""},
		{Config{PasswordFile: file}, "s3cret"},
		{Config{PasswordEnv: "VIGIL_TEST_CH_PASSWORD"}, "fr0m-env"},
	} {
		if got, err := tc.cfg.password(); err != nil || got != tc.want {
			t.Errorf("%+v: %q, %v; want %q", tc.cfg, got, err, tc.want)
		}
	}
	_, err := Config{PasswordEnv: "VIGIL_TEST_CH_UNSET"}.password()
	if err == nil || !strings.Contains(err.Error(), "VIGIL_TEST_CH_UNSET") {
		t.Errorf("unset variable: %v, want an error naming it", err)
	}
	os.Chmod(file, 0o644)
	if _, err := (Config{PasswordFile: file}).password(); !errors.Is(err, detector.ErrSecretFileMode) || !strings.Contains(err.Error(), "clickhouse.password_file") {
		t.Errorf("password file readable by others: %v", err)
	}
}

// A real clickhouse-server with its native protocol over TLS
// (tcp_port_secure), presenting a certificate of a CA made in the test and
// requiring a client certificate signed by it. With the CA and the client
// certificate, vigil creates its schema and writes; without the CA, with
// another CA, or without (or with a refused) client certificate, New fails
// at once with a permanent error that says which settings to check.
func TestTLSClientCertificate(t *testing.T) {
	pki := sinktest.NewPKI(t, "vigil test CA")
	srv := sinktest.StartClickHouseTLS(t, pki)
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.Addr = []string{srv.SecureAddr()}
	cfg.Database = "tls_test"
	cfg.DialTimeout = 3 * time.Second
	cfg.TLS = TLSConfig{Enabled: true, CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	s, err := New(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("with the CA and a client certificate: %v", err)
	}
	f := newFixture(t)
	f.write(t, s)
	s.Close()
	if got := query(t, srv, "tls_test", "SELECT count() FROM alerts FINAL"); strings.TrimSpace(got) != "3" {
		t.Errorf("%s alerts over TLS, want 3", got)
	}

	other := sinktest.NewPKI(t, "another CA")
	for _, tc := range []struct {
		name string
		tls  TLSConfig
		want string
	}{
		{"no CA (system roots)", TLSConfig{CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "vigil does not trust the server's certificate: check clickhouse.tls.ca_file"},
		{"the wrong CA", TLSConfig{CAFile: other.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "certificate signed by unknown authority"},
		{"the wrong server name", TLSConfig{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey, ServerName: "ch.example"}, "clickhouse.tls.server_name"},
		{"no client certificate", TLSConfig{CAFile: pki.CAFile}, "the server refused vigil's client certificate, or its absence"},
		{"a client certificate of another CA", TLSConfig{CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey}, "check clickhouse.tls.cert_file"},
	} {
		c := cfg
		c.TLS = tc.tls
		c.TLS.Enabled = true
		start := time.Now()
		_, err := New(ctx, c, nil)
		t.Logf("%s: %v", tc.name, err)
		switch {
		case !errors.Is(err, detector.ErrPermanent) || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v; want a permanent error saying %q", tc.name, err, tc.want)
		case time.Since(start) > 5*time.Second:
			t.Errorf("%s: failed after %v, want at once", tc.name, time.Since(start))
		}
	}
	os.Chmod(pki.ClientKey, 0o604)
	if _, err := New(ctx, cfg, nil); !errors.Is(err, detector.ErrSecretFileMode) || !strings.Contains(err.Error(), "clickhouse.tls.key_file") {
		t.Errorf("client key readable by others: %v", err)
	}
}

// Migrations run in every instance at once, so each statement must be
// idempotent: migrate relies on IF NOT EXISTS to re-check a failed create.
func TestMigrationStatementsAreIdempotent(t *testing.T) {
	for _, m := range migrations {
		for _, stmt := range m.stmts {
			if !strings.Contains(stmt, "CREATE TABLE IF NOT EXISTS ") {
				t.Errorf("migration %d: not a CREATE TABLE IF NOT EXISTS: %.200s", m.version, stmt)
			}
		}
	}
}

// The schema applies twice (a second instance, a restart): the second time
// changes nothing, and schema_migrations records each version once.
func TestMigrationsAreIdempotent(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	s, cfg := newSink(t, srv)
	s.Close()
	s2, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
	var want string
	for _, m := range migrations {
		want += fmt.Sprintf("%d\t%s\n", m.version, m.name)
	}
	if got := query(t, srv, cfg.Database, "SELECT version, name FROM schema_migrations ORDER BY version"); got != want {
		t.Errorf("schema_migrations:\n%s\nwant\n%s", got, want)
	}
	if got, want := query(t, srv, cfg.Database, "SHOW TABLES"),
		"alerts\naudit\nrevocation_outcomes\nrevocations\nschema_migrations\nwindows\n"; got != want {
		t.Errorf("tables:\n%s\nwant\n%s", got, want)
	}
}

// schema.sql, applied with clickhouse-client, creates the same tables as
// the migrations; vigil then starts on that database and records them.
func TestSchemaSQLMatchesMigrations(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	_, cfg := newSink(t, srv)
	b, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	srv.Query(t, "DROP DATABASE IF EXISTS "+DefaultDatabase)
	srv.Query(t, string(b))
	t.Cleanup(func() { srv.Run("DROP DATABASE IF EXISTS " + DefaultDatabase) })
	for _, table := range []string{"windows", "alerts", "revocations", "revocation_outcomes", "audit", "schema_migrations"} {
		fromSQL := query(t, srv, DefaultDatabase, "SHOW CREATE TABLE "+table)
		fromGo := query(t, srv, cfg.Database, "SHOW CREATE TABLE "+table)
		if strings.Replace(fromGo, cfg.Database+".", DefaultDatabase+".", 1) != fromSQL {
			t.Errorf("%s differs:\nschema.sql: %s\nmigrations: %s", table, fromSQL, fromGo)
		}
	}
	vcfg := cfg
	vcfg.Database = DefaultDatabase
	s, err := New(context.Background(), vcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if got := query(t, srv, DefaultDatabase, "SELECT count() FROM schema_migrations"); got != fmt.Sprintf("%d\n", len(migrations)) {
		t.Errorf("schema_migrations has %q rows after vigil started on schema.sql", got)
	}
}

// Done-when: after a forced redelivery (every batch written twice, as the
// runtime does after a failed Write), clickhouse-client finds each window,
// alert, revocation request and chain entry exactly once.
func TestRedeliveryWritesOnce(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	s, cfg := newSink(t, srv)
	f := newFixture(t)
	f.write(t, s)
	f.write(t, s)
	// A batch redelivered in pieces, and one repeating a record.
	b := f.batches[0]
	b.Windows = b.Windows[:2]
	b.Alerts = []*detector.Alert{b.Alerts[1], b.Alerts[1]}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	windows := len(f.batches[0].Windows) + len(f.batches[1].Windows)
	for _, tc := range []struct{ sql, want string }{
		{"SELECT count() FROM windows FINAL", fmt.Sprint(windows)},
		{"SELECT uniqExact(agent_id, window_start) FROM windows", fmt.Sprint(windows)},
		{"SELECT count() FROM alerts", "3"}, // not even twice before a merge
		{"SELECT count() FROM alerts FINAL", "3"},
		{"SELECT count() FROM revocations", "2"},
		{"SELECT count() FROM revocations FINAL", "2"},
		{"SELECT count() FROM audit", "5"},
		{"SELECT topic, kafka_partition, max(seq), count() FROM audit GROUP BY topic, kafka_partition ORDER BY kafka_partition",
			"agent-events\t0\t3\t3\nagent-events\t1\t2\t2"},
	} {
		if got := strings.TrimSpace(query(t, srv, cfg.Database, tc.sql)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.sql, got, tc.want)
		}
	}
	// Merging collapses the duplicate windows for good.
	query(t, srv, cfg.Database, "OPTIMIZE TABLE windows FINAL")
	if got := strings.TrimSpace(query(t, srv, cfg.Database, "SELECT count() FROM windows")); got != fmt.Sprint(windows) {
		t.Errorf("windows after OPTIMIZE FINAL: %s, want %d", got, windows)
	}
	for p := range 2 {
		if _, err := s.VerifyChain(context.Background(), fixtureTopic, p); err != nil {
			t.Error(err)
		}
	}
}

// Partition workers write at once; the same batch delivered concurrently
// (a worker and its retry, or two instances during a rebalance on one
// process) still lands once and keeps the chain linear.
func TestConcurrentWrites(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	s, cfg := newSink(t, srv)
	f := newFixture(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		for _, b := range f.batches {
			wg.Go(func() { errs <- s.Write(context.Background(), b) })
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.TrimSpace(query(t, srv, cfg.Database, "SELECT count(), uniqExact(record_id) FROM audit")); got != "5\t5" {
		t.Errorf("audit: %q entries and ids, want 5 and 5", got)
	}
	for p, want := range []int{3, 2} {
		if n, err := s.VerifyChain(context.Background(), fixtureTopic, p); err != nil || n != want {
			t.Errorf("partition %d: %d entries, %v; want %d", p, n, err, want)
		}
	}
}

// What the sink stores is what vigil emitted: the signed revocation body
// verifies, the alert JSON and columns carry the contract's fields.
func TestStoredRecords(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	s, cfg := newSink(t, srv)
	f := newFixture(t)
	f.write(t, s)
	body := query(t, srv, cfg.Database, fmt.Sprintf("SELECT body FROM revocations FINAL WHERE request_id = '%s' FORMAT TSVRaw", f.revs[0].RequestID))
	if strings.TrimSpace(body) != string(f.revs[0].Body) {
		t.Errorf("stored body:\n%s\nwant\n%s", body, f.revs[0].Body)
	}
	a := f.alerts[0]
	got := query(t, srv, cfg.Database, fmt.Sprintf(`SELECT agent_id, agent_class, window_start, window_end, detected_at, detected_at_ms,
		score, severity, kind, reason_feature, reason_z, baseline_source, baseline_windows, credential_id, topic, kafka_partition
		FROM alerts FINAL WHERE alert_id = '%s'`, a.AlertID))
	want := fmt.Sprintf("%s\tpayments\t%s\t%s\t%s\t345\t97\tcritical\tnovel_access\t['new_targets','new_to_peer_group','distinct_target_share']\t[9.5,8.5,3]\tagent\t500\tcert-7781\tagent-events\t0\n",
		agentPayments, dt(a.WindowStart), dt(a.WindowEnd), dt(a.DetectedAt))
	if got != want {
		t.Errorf("alert row:\n%s\nwant\n%s", got, want)
	}
	got = query(t, srv, cfg.Database, fmt.Sprintf(`SELECT hour_of_week, events, scored = ['event_count', 'distinct_target_share', 'new_targets', 'new_actions',
		'new_credentials', 'new_src_addresses', 'new_to_peer_group', 'action_mix_jsd', 'deny_rate', 'error_rate', 'bytes_out_per_event',
		'bytes_in_per_event', 'latency_ms', 'amount_per_event', 'restricted_share', 'weak_auth_share', 'denied_unfamiliar', 'new_origin_share'], cold, new_targets, expected_new_targets, z_new_targets
		FROM windows FINAL WHERE agent_id = '%s' AND window_start = '%s'`, agentPayments, dt(a.WindowStart)))
	if want := fmt.Sprintf("%d\t240\t1\t0\t4\t0.25\t9.5\n", f.payWindow.HourOfWeek); got != want {
		t.Errorf("window row: %q, want %q", got, want)
	}
	got = query(t, srv, cfg.Database, fmt.Sprintf("SELECT scored, cold, baseline_source FROM windows FINAL WHERE agent_id = '%s' ORDER BY window_start LIMIT 1", agentLedger))
	if want := "[]\t1\tpeer_group\n"; got != want {
		t.Errorf("cold window: %q, want %q", got, want)
	}
}

// Every query in deploy/clickhouse/queries.sql runs on the real server and
// answers its question on the fixture.
func TestAnalystQueries(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	s, cfg := newSink(t, srv)
	f := newFixture(t)
	f.write(t, s)
	f.write(t, s) // redelivered: the answers must not change
	f.outcomes(t, srv, cfg.Database)

	ts := func(k int) string { return dt(f.ts(k)) }
	tsv := func(rows ...[]any) string {
		var b strings.Builder
		for _, r := range rows {
			for i, v := range r {
				if i > 0 {
					b.WriteByte('\t')
				}
				fmt.Fprint(&b, v)
			}
			b.WriteByte('\n')
		}
		return b.String()
	}
	a1, a3, r1, r3 := f.alerts[0], f.alerts[2], f.revs[0], f.revs[1]
	pw := f.payWindow
	alertWindow := make([][]any, 0, features.NumFeatures)
	for i := range features.NumFeatures {
		alertWindow = append(alertWindow, []any{agentPayments, ts(3), 240, 97, i.String(), pw.Value[i], pw.Expected[i], pw.Z[i], 1})
	}
	want := map[string]string{
		"agent_score_history": tsv(
			[]any{ts(0), ts(1), 120, 2, "none", 0, "agent", 0, 0},
			[]any{ts(1), ts(2), 118, 3.5, "none", 0, "agent", 0, 0},
			[]any{ts(2), ts(3), 131, 5, "none", 0, "agent", 0, 0},
			[]any{ts(3), ts(4), 240, 97, "critical", 0, "agent", 4, 9.5},
			[]any{ts(4), ts(5), 150, 40, "info", 0, "agent", 1, 2.25},
			[]any{ts(5), ts(6), 125, 4, "none", 0, "agent", 0, 0}),
		"top_anomalous_agents_today": tsv(
			[]any{agentPayments, "payments", 97, ts(3), 1, 0, 6},
			[]any{agentTreasury, "treasury", 96, ts(2), 1, 0, 1},
			[]any{agentReporting, "reporting", 65, ts(1), 0, 1, 3}),
		"first_seen_targets_this_week": tsv(
			[]any{agentPayments, 5, 2, ts(3)},
			[]any{agentTreasury, 2, 1, ts(2)},
			[]any{agentReporting, 1, 1, ts(1)}),
		"alert_evidence": tsv(
			[]any{fixtureAlertID, agentPayments, ts(3), dt(a1.DetectedAt), "novel_access", "critical", 97, "agent", 500, "cert-7781", "new_targets", 4, 0.25, 9.5, 0.625},
			[]any{fixtureAlertID, agentPayments, ts(3), dt(a1.DetectedAt), "novel_access", "critical", 97, "agent", 500, "cert-7781", "new_to_peer_group", 3, 0.125, 8.5, 0.25},
			[]any{fixtureAlertID, agentPayments, ts(3), dt(a1.DetectedAt), "novel_access", "critical", 97, "agent", 500, "cert-7781", "distinct_target_share", 0.375, 0.125, 3, 0.125}),
		"alert_window": tsv(alertWindow...),
		"alert_revocations": tsv(
			[]any{r1.RequestID, "quarantine", "enforce", "policy", dt(r1.ExpiresAt), "restored", dt(f.ts(3).Add(69 * time.Minute))}),
		"alert_audit_entries": tsv(
			[]any{fixtureTopic, 0, 1, "alert", fixtureAlertID},
			[]any{fixtureTopic, 0, 3, "revocation", r1.RequestID}),
		"revocations_with_outcome": tsv(
			[]any{dt(r1.DetectedAt), agentPayments, r1.RequestID, "quarantine", "enforce", "policy", dt(r1.ExpiresAt), "restored",
				dt(f.ts(3).Add(69 * time.Minute)), "analyst:jdoe", "false positive: new payee onboarding"},
			[]any{dt(a3.DetectedAt), agentTreasury, r3.RequestID, "quarantine", "dry_run", "budget", dt(r3.ExpiresAt), "pending", "", "", ""}),
		"audit_chain_breaks": "",
	}
	queries := readQueries(t)
	for name := range want {
		if _, ok := queries[name]; !ok {
			t.Errorf("queries.sql has no query %q", name)
		}
	}
	for name, sql := range queries {
		t.Run(name, func(t *testing.T) {
			w, ok := want[name]
			if !ok {
				t.Fatalf("no expected answer for query %q: add one to this test", name)
			}
			if got := query(t, srv, cfg.Database, sql); got != w {
				t.Errorf("got\n%s\nwant\n%s", got, w)
			}
		})
	}
}

// readQueries returns deploy/clickhouse/queries.sql's queries by name: the
// text from each "-- name: N" line to the next.
func readQueries(t testing.TB) map[string]string {
	t.Helper()
	fh, err := os.Open("../../deploy/clickhouse/queries.sql")
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	qs := make(map[string]string)
	var name string
	var b strings.Builder
	flush := func() {
		if name != "" {
			qs[name] = b.String()
		}
		b.Reset()
	}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "-- name: "); ok {
			flush()
			name = strings.TrimSpace(n)
			if _, dup := qs[name]; dup {
				t.Fatalf("queries.sql: query %q twice", name)
			}
		}
		if name != "" {
			b.WriteString(line + "\n")
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return qs
}

// The audit chain verifies, and each kind of tampering breaks it: an entry
// changed in place, an alert row replaced, an alert row inserted, a chain
// entry removed. audit_chain_breaks in queries.sql flags the same entry.
func TestAuditChainDetectsTampering(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, db string, f *fixture)
		want   string
		kind   BreakKind
	}{
		{"none", func(*testing.T, string, *fixture) {}, "", ""},
		{"entry changed", func(t *testing.T, db string, f *fixture) {
			mutate(t, srv, db, "ALTER TABLE audit UPDATE record = replaceOne(record, '\"score\":97', '\"score\":17') WHERE seq = 1 AND kafka_partition = 0")
		}, "entry 1 (alert " + fixtureAlertID + ") does not match its hash", BreakAltered},
		{"alert replaced", func(t *testing.T, db string, f *fixture) {
			query(t, srv, db, fmt.Sprintf(`INSERT INTO alerts (alert_id, agent_id, window_start, score, severity, kind, topic, kafka_partition, json)
				SELECT alert_id, agent_id, window_start, 17, severity, kind, topic, kafka_partition, replaceOne(json, '"score":97', '"score":17')
				FROM alerts FINAL WHERE alert_id = '%s'`, fixtureAlertID))
		}, "alert " + fixtureAlertID + " differs from its chain entry", BreakAltered},
		{"column changed", func(t *testing.T, db string, f *fixture) {
			mutate(t, srv, db, fmt.Sprintf("ALTER TABLE alerts UPDATE score = 17 WHERE alert_id = '%s'", fixtureAlertID))
		}, "alert " + fixtureAlertID + ": its columns disagree with its JSON", BreakAltered},
		{"alert inserted", func(t *testing.T, db string, f *fixture) {
			query(t, srv, db, fmt.Sprintf(`INSERT INTO alerts (alert_id, agent_id, window_start, topic, kafka_partition, json)
				VALUES ('forged', '%s', '%s', 'agent-events', 0, '{}')`, agentPayments, dt(f.ts(1))))
		}, "alert forged is not in the chain", BreakAltered},
		{"entry removed", func(t *testing.T, db string, f *fixture) {
			mutate(t, srv, db, "ALTER TABLE audit DELETE WHERE seq = 2 AND kafka_partition = 0")
		}, "entry 2 is missing", BreakMissing},
		{"entries swapped", func(t *testing.T, db string, f *fixture) {
			rebuildAudit(t, srv, db, "multiIf(kafka_partition = 0 AND seq = 1, 2, kafka_partition = 0 AND seq = 2, 1, seq)")
		}, ") was written as entry 2: entries were reordered", BreakReordered},
		{"entry removed, the rest renumbered", func(t *testing.T, db string, f *fixture) {
			mutate(t, srv, db, "ALTER TABLE audit DELETE WHERE seq = 1 AND kafka_partition = 0")
			rebuildAudit(t, srv, db, "if(kafka_partition = 0, seq - 1, toInt64(seq))")
		}, ") follows an entry that is no longer in the chain", BreakMissing},
		{"alert row removed", func(t *testing.T, db string, f *fixture) {
			mutate(t, srv, db, fmt.Sprintf("ALTER TABLE alerts DELETE WHERE alert_id = '%s'", fixtureAlertID))
		}, "alert " + fixtureAlertID + " in the chain is missing from its table", BreakMissing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, cfg := newSink(t, srv)
			f := newFixture(t)
			f.write(t, s)
			tc.tamper(t, cfg.Database, f)
			n, err := s.VerifyChain(ctx, fixtureTopic, 0)
			if tc.want == "" {
				if err != nil || n != 3 {
					t.Fatalf("VerifyChain: %d entries, %v; want 3, nil", n, err)
				}
				if n, err := s.VerifyChain(ctx, fixtureTopic, 1); err != nil || n != 2 {
					t.Fatalf("VerifyChain partition 1: %d entries, %v; want 2, nil", n, err)
				}
				return
			}
			var ce *ChainError
			if !errors.Is(err, ErrChainBroken) || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ce) || ce.Kind != tc.kind {
				t.Fatalf("VerifyChain: %v; want ErrChainBroken (%s): %s", err, tc.kind, tc.want)
			}
			// The other partition's chain is intact.
			if _, err := s.VerifyChain(ctx, fixtureTopic, 1); err != nil {
				t.Errorf("partition 1: %v", err)
			}
		})
	}
	t.Run("sql", func(t *testing.T) {
		t.Parallel()
		s, cfg := newSink(t, srv)
		f := newFixture(t)
		f.write(t, s)
		mutate(t, srv, cfg.Database, "ALTER TABLE audit UPDATE record = replaceOne(record, '\"score\":97', '\"score\":17') WHERE seq = 1 AND kafka_partition = 0")
		got := query(t, srv, cfg.Database, readQueries(t)["audit_chain_breaks"])
		if want := fmt.Sprintf("%s\t0\t1\talert\t%s\t1\t0\n", fixtureTopic, fixtureAlertID); got != want {
			t.Errorf("audit_chain_breaks:\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("another instance appends", func(t *testing.T) {
		t.Parallel()
		// A partition moved to another instance: its sink continues the
		// chain from the stored head.
		s, cfg := newSink(t, srv)
		f := newFixture(t)
		f.write(t, s)
		s2, err := New(ctx, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		b := f.batches[0]
		b.Alerts = []*detector.Alert{{AlertID: "later", AgentID: agentPayments, WindowStart: f.ts(5), WindowEnd: f.ts(6), DetectedAt: f.ts(6)}}
		b.Revocations, b.Windows = nil, nil
		if err := s2.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
		if n, err := s.VerifyChain(ctx, fixtureTopic, 0); err != nil || n != 4 {
			t.Fatalf("VerifyChain: %d, %v; want 4 entries", n, err)
		}
	})
}

// Heads are each chain's last entry; CheckHead finds them in an intact
// chain and misses them in one whose end was cut off, which VerifyChain
// alone cannot tell.
func TestHeads(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	ctx := context.Background()
	s, cfg := newSink(t, srv)
	f := newFixture(t)
	f.write(t, s)
	heads := s.Heads()
	if len(heads) != 2 || heads[0].Key() != fixtureTopic+"/0" || heads[0].Seq != 3 || heads[1].Seq != 2 || len(heads[0].Hash) != 64 {
		t.Fatalf("Heads: %+v; want %s/0 at 3 and /1 at 2", heads, fixtureTopic)
	}
	for _, h := range heads {
		if err := s.CheckHead(ctx, h); err != nil {
			t.Errorf("CheckHead(%+v): %v", h, err)
		}
	}
	r, err := Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if chains, err := r.Chains(ctx); err != nil || len(chains) != 2 || chains[1].Key() != fixtureTopic+"/1" {
		t.Fatalf("Chains: %+v, %v", chains, err)
	}
	// Cut the last entry (the revocation request) and its row off.
	mutate(t, srv, cfg.Database, "ALTER TABLE audit DELETE WHERE seq = 3 AND kafka_partition = 0")
	mutate(t, srv, cfg.Database, fmt.Sprintf("ALTER TABLE revocations DELETE WHERE request_id = '%s'", f.revs[0].RequestID))
	if n, err := r.VerifyChain(ctx, fixtureTopic, 0); err != nil || n != 2 {
		t.Fatalf("VerifyChain after the cut: %d, %v; want 2 entries, nil", n, err)
	}
	var ce *ChainError
	if err := r.CheckHead(ctx, heads[0]); !errors.As(err, &ce) || ce.Kind != BreakHead || !strings.Contains(err.Error(), "the chain ends at entry 2, before entry 3") {
		t.Fatalf("CheckHead after the cut: %v", err)
	}
	forged := heads[1]
	forged.Hash = strings.Repeat("a", 64)
	if err := r.CheckHead(ctx, forged); !errors.As(err, &ce) || ce.Kind != BreakHead || !strings.Contains(err.Error(), "the chain was rewritten") {
		t.Fatalf("CheckHead of another hash: %v", err)
	}
	if _, err := Open(ctx, Config{Addr: cfg.Addr, Database: "no_such_db", Username: "default", DialTimeout: time.Second, WriteTimeout: time.Second}, nil); err == nil {
		t.Error("Open of a database without an audit table succeeded")
	}
}

// rebuildAudit rewrites the audit table with seq computed by seqExpr, through
// a copy: ClickHouse cannot UPDATE seq, a column of the sort key.
func rebuildAudit(t *testing.T, srv *sinktest.ClickHouse, db, seqExpr string) {
	t.Helper()
	query(t, srv, db, "CREATE TABLE audit_new AS audit; "+
		"INSERT INTO audit_new (topic, kafka_partition, seq, record_type, record_id, at, prev_hash, hash, record) "+
		"SELECT topic, kafka_partition, toUInt64("+seqExpr+"), record_type, record_id, at, prev_hash, hash, record FROM audit; "+
		"DROP TABLE audit; RENAME TABLE audit_new TO audit")
}

// mutate runs an ALTER TABLE … UPDATE/DELETE and waits for it: mutations
// are asynchronous on 18.16.
func mutate(t *testing.T, srv *sinktest.ClickHouse, db, sql string) {
	t.Helper()
	query(t, srv, db, sql)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := query(t, srv, db, fmt.Sprintf("SELECT count() FROM system.mutations WHERE database = '%s' AND is_done = 0", db))
		if strings.TrimSpace(out) == "0" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mutation %q not done after 20 s", sql)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A server that is down gives errors the runtime retries; once it is back
// the same batch goes through, once. A schema the sink cannot write gives
// a permanent error.
func TestErrorClassification(t *testing.T) {
	t.Parallel()
	srv := sinktest.StartClickHouse(t)
	s, cfg := newSink(t, srv)
	s.cfg.WriteTimeout = 3 * time.Second
	ctx := context.Background()
	f := newFixture(t)
	if err := s.Write(ctx, f.batches[0]); err != nil {
		t.Fatal(err)
	}

	srv.Stop(t)
	for _, b := range f.batches {
		err := s.Write(ctx, b)
		if err == nil || errors.Is(err, detector.ErrPermanent) {
			t.Fatalf("server stopped: Write returned %v, want a transient error", err)
		}
		t.Logf("server stopped: %v", err)
	}
	if _, err := New(ctx, cfg, nil); err == nil || errors.Is(err, detector.ErrPermanent) {
		t.Errorf("server stopped: New returned %v, want a transient error", err)
	}
	srv.Start(t)
	var err error
	for range 50 { // pooled connections to the old process fail once
		if err = s.Write(ctx, f.batches[1]); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("server back: %v", err)
	}
	if err := s.Write(ctx, f.batches[0]); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(query(t, srv, cfg.Database, "SELECT count() FROM alerts FINAL")); got != "3" {
		t.Errorf("alerts after the restart: %s, want 3", got)
	}

	query(t, srv, cfg.Database, "ALTER TABLE windows DROP COLUMN z_latency_ms")
	err = s.Write(ctx, f.batches[0])
	if !errors.Is(err, detector.ErrPermanent) {
		t.Errorf("column dropped: Write returned %v, want ErrPermanent", err)
	}
	t.Logf("column dropped: %v", err)

	bad := cfg
	bad.Username = "nobody"
	if _, err := New(ctx, bad, nil); !errors.Is(err, detector.ErrPermanent) {
		t.Errorf("unknown user: New returned %v, want ErrPermanent", err)
	}
	var cancelled context.Context
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Write(cancelled, f.batches[1]); err == nil || errors.Is(err, detector.ErrPermanent) {
		t.Errorf("cancelled: Write returned %v, want a transient error", err)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err       error
		permanent bool
	}{
		{&ch.Exception{Code: 16, Message: "No such column"}, true},
		{&ch.Exception{Code: 53, Message: "Type mismatch"}, true},
		{&ch.Exception{Code: 516, Message: "Authentication failed"}, true},
		{&ch.Exception{Code: 252, Message: "Too many parts"}, false},
		{&ch.Exception{Code: 241, Message: "Memory limit exceeded"}, false},
		{fmt.Errorf("append: %w", ch.ErrBatchInvalid), true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, false},
		{io.EOF, false},
		{context.DeadlineExceeded, false},
		{ch.ErrAcquireConnTimeout, false},
	} {
		err := classify("insert windows", tc.err)
		if got := errors.Is(err, detector.ErrPermanent); got != tc.permanent {
			t.Errorf("%v: permanent %v, want %v", tc.err, got, tc.permanent)
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%v: the cause is lost: %v", tc.err, err)
		}
	}
}

// BenchmarkWriteWindows measures inserting window records (the bulk of
// what vigil writes) into a real server, by batch size: each insert
// creates a part on the server, so larger batches amortise its fixed cost.
func BenchmarkWriteWindows(b *testing.B) {
	srv := sinktest.SharedClickHouse(b)
	f := newFixture(b)
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			s, _ := newSink(b, srv)
			ws := make([]detector.WindowRecord, n)
			for i := range ws {
				ws[i] = f.payWindow
				ws[i].AgentID = fmt.Sprintf("spiffe://bank.example/agent/bench-%05d", i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				step := int64(i) * int64(10*time.Minute)
				for j := range ws {
					ws[j].Start, ws[j].End = f.payWindow.Start+step, f.payWindow.End+step
				}
				if err := s.Write(context.Background(), detector.Batch{Topic: fixtureTopic, Windows: ws}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// A database made by a vigil from before migration 2 (windows without the
// denied_unfamiliar columns, rows in it) is brought up to date: the columns
// are added after the older feature columns, old rows read 0, and a column
// already there (a migration interrupted half-way) is left alone.
func TestMigrationAddsColumnsToOldDatabase(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	cfg := DefaultConfig()
	cfg.Addr = []string{srv.Addr()}
	cfg.Database = fmt.Sprintf("t_old_schema_%d_%d", os.Getpid(), dbSeq.Add(1))
	query(t, srv, "default", "CREATE DATABASE "+cfg.Database)
	query(t, srv, cfg.Database, createMigrations)
	for _, stmt := range migrations[0].stmts {
		query(t, srv, cfg.Database, stmt)
	}
	query(t, srv, cfg.Database, fmt.Sprintf("INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, '%s', now())", migrations[0].name))
	query(t, srv, cfg.Database, "INSERT INTO windows (agent_id, window_start, events) VALUES ('old-agent', toDateTime('2026-03-02 09:00:00', 'UTC'), 7)")
	first := migrations[1].columns[0]
	query(t, srv, cfg.Database, first.alter()) // as if interrupted after one column
	s, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	got := query(t, srv, cfg.Database, "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'windows' AND position(name, 'weak_auth_share') + position(name, 'denied_unfamiliar') > 0")
	if want := "weak_auth_share\nexpected_weak_auth_share\nz_weak_auth_share\ndenied_unfamiliar\nexpected_denied_unfamiliar\nz_denied_unfamiliar\n"; got != want {
		t.Errorf("columns:\n%s\nwant\n%s", got, want)
	}
	if got := query(t, srv, cfg.Database, "SELECT events, denied_unfamiliar, z_denied_unfamiliar FROM windows"); got != "7\t0\t0\n" {
		t.Errorf("old row: %q", got)
	}
}

// What an event's producer chooses reaches ClickHouse as it is, and no
// choice makes an insert fail: ids of 60 KiB with NUL, control and bidi
// characters (String columns take any bytes; the decoder takes only valid
// UTF-8), infinite and NaN feature values; the audit chain verifies. Nor
// does a window in 2150 (the decoder takes years to 2199): DateTime ends in
// 2106 and the driver wraps the time without an error, so that row is
// stored with a wrong time (logged here; bounding event time is the
// pipeline's job).
func TestHostileContentIsStored(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	s, cfg := newSink(t, srv)
	id := "spiffe://x/\x00\x01\x1b[31m\u202e\u200b\u2028" + strings.Repeat("<é\t\"", 60<<10/5)
	ws := time.Now().UTC().Truncate(5 * time.Minute)
	w := detector.WindowRecord{AgentID: id, AgentClass: id, Start: ws.UnixNano(), End: ws.Add(5 * time.Minute).UnixNano(), Severity: detector.SeverityCritical, Score: 99}
	w.Value[0], w.Expected[0], w.Z[0] = math.Inf(1), math.NaN(), math.Inf(-1)
	now := time.Now().UTC()
	a := &detector.Alert{AlertID: "hostile-1", AgentID: id, AgentClass: id, WindowStart: ws, WindowEnd: ws.Add(5 * time.Minute),
		DetectedAt: now, Score: 99, Severity: detector.SeverityCritical, Kind: detector.KindVolume, Credentials: []string{id},
		Baseline: detector.Baseline{Source: models.SourceAgent, Windows: 3}}
	r := &detector.Revocation{RequestID: "hostile-r1", AlertID: "hostile-1", AgentID: id, AgentClass: id, WindowStart: ws, WindowEnd: ws,
		DetectedAt: now, Score: 99, Severity: detector.SeverityCritical, Kind: detector.KindVolume, CredentialID: id,
		Action: detector.ActionQuarantine, Mode: detector.ModeDryRun, Why: "policy", ExpiresAt: now.Add(time.Hour)}
	future := w
	future.Start = time.Date(2150, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	b := detector.Batch{Topic: fixtureTopic, Partition: 0, Windows: []detector.WindowRecord{w, future}, Alerts: []*detector.Alert{a}, Revocations: []*detector.Revocation{r}}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatalf("Write: %v", err)
	}
	for _, tc := range []struct{ sql, want string }{
		{"SELECT count(), any(length(agent_id)), any(agent_id) = any(agent_class) FROM windows", fmt.Sprintf("2\t%d\t1", len(id))},
		{"SELECT count(), any(length(agent_id)), any(length(credential_id)) FROM alerts", fmt.Sprintf("1\t%d\t%d", len(id), len(id))},
		{"SELECT count(), any(length(agent_id)) FROM revocations", fmt.Sprintf("1\t%d", len(id))},
		{"SELECT count() FROM audit", "2"},
	} {
		if got := strings.TrimSpace(query(t, srv, cfg.Database, tc.sql)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.sql, got, tc.want)
		}
	}
	if _, err := s.VerifyChain(context.Background(), fixtureTopic, 0); err != nil {
		t.Error(err)
	}
	t.Logf("a window starting 2150-01-01T00:00:00Z is stored as starting %s",
		strings.TrimSpace(query(t, srv, cfg.Database, "SELECT toString(min(window_start), 'UTC') FROM windows")))
}

// Every member of a consumer group starts at once against a fresh
// database: concurrent migrators all succeed and leave the schema one
// migrator leaves, with each version recorded. The race needs several
// rounds to show, so each round is a fresh database. (Before the fix most
// rounds failed: "migration 2 (windows: denied_unfamiliar): code: 44 …
// column with this name already exists".)
func TestConcurrentMigrations(t *testing.T) {
	t.Parallel()
	const rounds, migrators = 10, 6
	srv := sinktest.SharedClickHouse(t)
	_, ref := newSink(t, srv)
	// In table order and, within a table, column order (18.16's
	// system.columns has no position to sort by).
	schema := func(db string) string {
		return query(t, srv, "default", fmt.Sprintf("SELECT table, name, type, default_kind, default_expression "+
			"FROM system.columns WHERE database = '%s'", db))
	}
	want := schema(ref.Database)
	var wantVersions string
	for _, m := range migrations {
		wantVersions += fmt.Sprintf("%d\t%s\n", m.version, m.name)
	}
	for round := range rounds {
		cfg := ref
		cfg.Database = fmt.Sprintf("t_concurrent_migrations_%d_%d", os.Getpid(), dbSeq.Add(1))
		t.Cleanup(func() { srv.Run("DROP DATABASE IF EXISTS " + cfg.Database) })
		start := make(chan struct{})
		errs := make(chan error, migrators)
		var wg sync.WaitGroup
		for range migrators {
			wg.Go(func() {
				<-start
				s, err := New(context.Background(), cfg, nil)
				if err == nil {
					s.Close()
				}
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("round %d: %v", round, err)
			}
		}
		if got := schema(cfg.Database); got != want {
			t.Errorf("round %d: columns:\n%s\nwant (one migrator)\n%s", round, got, want)
		}
		// Several migrators may record a version: FINAL, as migrate
		// reads it, sees each once.
		if got := query(t, srv, cfg.Database, "SELECT version, name FROM schema_migrations FINAL ORDER BY version"); got != wantVersions {
			t.Errorf("round %d: schema_migrations:\n%s\nwant\n%s", round, got, wantVersions)
		}
	}
}

// The closed loop's outcomes land in revocation_outcomes (decided_by
// vigil), once however often they are redelivered.
func TestOutcomesWritten(t *testing.T) {
	t.Parallel()
	srv := sinktest.SharedClickHouse(t)
	s, cfg := newSink(t, srv)
	at := time.Date(2026, 3, 2, 10, 5, 0, 0, time.UTC)
	b := detector.Batch{Topic: "agent-events", Partition: 0, Outcomes: []detector.Outcome{
		{RequestID: "r-1", AgentID: "spiffe://bank/agent/a", Outcome: detector.OutcomeEffective, DecidedAt: at, TimeToEffect: 40 * time.Second, AllowedAfter: 1},
		{RequestID: "r-2", AgentID: "spiffe://bank/agent/b", Outcome: detector.OutcomeIneffective, DecidedAt: at, TimeToEffect: -1, AllowedAfter: 7},
	}}
	for range 2 {
		if err := s.Write(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	got := strings.TrimSpace(query(t, srv, cfg.Database, "SELECT request_id, outcome, decided_by, detail FROM revocation_outcomes FINAL ORDER BY request_id"))
	want := "r-1\teffective\tvigil\t{\"agent_id\":\"spiffe://bank/agent/a\",\"time_to_effect_ms\":40000,\"allowed_after\":1}\n" +
		"r-2\tineffective\tvigil\t{\"agent_id\":\"spiffe://bank/agent/b\",\"time_to_effect_ms\":-1,\"allowed_after\":7}"
	if got != want {
		t.Errorf("revocation_outcomes:\n%s\nwant\n%s", got, want)
	}
}
