package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
	"github.com/vigil-sec/vigil/sinks/clickhouse"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// auditBatches are alerts and revocation requests for the events topic's
// partitions 0 (four batches: six chain entries) and 1 (one batch: two).
// scoreOf changes an alert's score, for a rewritten history.
func auditBatches(scoreOf func(i int) float64) []detector.Batch {
	day := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	alert := func(i int) *detector.Alert {
		start := day.Add(time.Duration(i) * 10 * time.Minute)
		agent := fmt.Sprintf("spiffe://bank.example/agent/bot-%02d", i%3)
		return &detector.Alert{
			AlertID: detector.AlertID(agent, start.UnixNano(), detector.KindVolume), AgentID: agent, AgentClass: "bots",
			WindowStart: start, WindowEnd: start.Add(10 * time.Minute), DetectedAt: start.Add(11 * time.Minute),
			Score: scoreOf(i), Severity: detector.SeverityCritical, Kind: detector.KindVolume,
			Credentials: []string{"cert-" + agent[len(agent)-2:]},
		}
	}
	revoke := func(a *detector.Alert) *detector.Revocation {
		return &detector.Revocation{
			RequestID: detector.RequestID(a.AlertID, detector.ActionQuarantine), AlertID: a.AlertID, AgentID: a.AgentID,
			AgentClass: a.AgentClass, WindowStart: a.WindowStart, WindowEnd: a.WindowEnd, DetectedAt: a.DetectedAt,
			Score: a.Score, Severity: a.Severity, Kind: a.Kind, CredentialID: a.Credentials[0],
			Action: detector.ActionQuarantine, Mode: detector.ModeDryRun, Why: detector.WhyPolicy, ExpiresAt: a.DetectedAt.Add(time.Hour),
		}
	}
	var bs []detector.Batch
	for i := range 4 {
		a := alert(i)
		b := detector.Batch{Topic: "agent-events", Partition: 0, Alerts: []*detector.Alert{a}}
		if i%2 == 1 {
			b.Revocations = []*detector.Revocation{revoke(a)}
		}
		bs = append(bs, b)
	}
	return append(bs, detector.Batch{Topic: "agent-events", Partition: 1, Alerts: []*detector.Alert{alert(10), alert(11)}})
}

// auditWrite writes batches to database db through the ClickHouse sink.
// With headsTopic set, a head publisher (as vigil run wires it) publishes
// the heads to it when it stops, and its metric must show them (the
// batches must then be all of auditBatches).
func auditWrite(t *testing.T, chAddr, db, broker, headsTopic string, batches []detector.Batch) {
	t.Helper()
	ctx := context.Background()
	cfg := clickhouse.DefaultConfig()
	cfg.Addr, cfg.Database = []string{chAddr}, db
	s, err := clickhouse.New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, b := range batches {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if headsTopic == "" {
		return
	}
	kc := detector.DefaultRuntimeConfig()
	kc.Brokers = []string{broker}
	hc := DefaultAuditHeads()
	hc.Topic = headsTopic
	reg := prometheus.NewRegistry()
	p, err := newHeadPublisher(ctx, s, kc, hc, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	stop, cancel := context.WithCancel(ctx)
	cancel() // publishes once, as vigil run does when it stops
	if err := p.Run(stop); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"vigil_audit_chain_head_sequence,partition=0,topic=agent-events": 6,
		"vigil_audit_chain_head_sequence,partition=1,topic=agent-events": 2,
		"vigil_audit_head_publish_failures_total":                        0,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
	if got["vigil_audit_head_last_published_timestamp_seconds"] == 0 {
		t.Error("vigil_audit_head_last_published_timestamp_seconds is 0 after a publication")
	}
}

// auditMutate runs an ALTER TABLE … UPDATE/DELETE in db and waits for it:
// mutations are asynchronous on ClickHouse 18.16.
func auditMutate(t *testing.T, ch *sinktest.ClickHouse, db, sql string) {
	t.Helper()
	if out, err := ch.Run(sql, "--database", db); err != nil {
		t.Fatalf("%s: %v\n%s", sql, err, out)
	}
	waitFor(t, 20*time.Second, "mutation "+sql, func() bool {
		out, err := ch.Run(fmt.Sprintf("SELECT count() FROM system.mutations WHERE database = '%s' AND is_done = 0", db))
		return err == nil && strings.TrimSpace(out) == "0"
	})
}

// auditVerify runs vigil audit with args and returns its exit status and
// output.
func auditVerify(args ...string) (int, string) {
	var out, errb bytes.Buffer
	rc := run(append([]string{"audit"}, args...), nil, &out, &errb)
	return rc, out.String() + errb.String()
}

// vigil audit verify finds each kind of tampering with the chains in a real
// ClickHouse, with its exit status; one that rewrites a chain consistently
// only against the heads published to the broker.
func TestAuditVerify(t *testing.T) {
	ch := sinktest.StartClickHouse(t)
	broker := startDevbroker(t)
	same := func(i int) float64 { return 90 + float64(i%10) }
	db := func(name string) string { return "audit_" + name }

	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, db string)
		rc     int
		want   string
	}{
		{"intact", func(*testing.T, string) {}, 0, "agent-events/0: ok, 6 entries"},
		{"entry deleted", func(t *testing.T, db string) {
			auditMutate(t, ch, db, "ALTER TABLE audit DELETE WHERE kafka_partition = 0 AND seq = 3")
		}, exitMissing, "agent-events/0: BROKEN missing at entry 3: entry 3 is missing"},
		{"alert row deleted", func(t *testing.T, db string) {
			auditMutate(t, ch, db, "ALTER TABLE alerts DELETE WHERE kafka_partition = 1 AND score = 91")
		}, exitMissing, "agent-events/1: BROKEN missing (alert "},
		{"entry edited", func(t *testing.T, db string) {
			auditMutate(t, ch, db, `ALTER TABLE audit UPDATE record = replaceOne(record, '"score":92', '"score":12') WHERE kafka_partition = 0 AND seq = 4`)
		}, exitAltered, ") does not match its hash"},
		{"alert body edited", func(t *testing.T, db string) {
			auditMutate(t, ch, db, `ALTER TABLE alerts UPDATE json = replaceOne(json, '"score":92', '"score":12') WHERE kafka_partition = 0 AND score = 92`)
		}, exitAltered, "differs from its chain entry"},
		{"entries swapped", func(t *testing.T, db string) {
			// ClickHouse cannot UPDATE seq, a sort key column: copy the table.
			ch.Query(t, "CREATE TABLE "+db+".audit_new AS "+db+".audit; "+
				"INSERT INTO "+db+".audit_new (topic, kafka_partition, seq, record_type, record_id, at, prev_hash, hash, record) "+
				"SELECT topic, kafka_partition, multiIf(kafka_partition = 0 AND seq = 2, 5, kafka_partition = 0 AND seq = 5, 2, seq), "+
				"record_type, record_id, at, prev_hash, hash, record FROM "+db+".audit; "+
				"DROP TABLE "+db+".audit; RENAME TABLE "+db+".audit_new TO "+db+".audit")
		}, exitReordered, "agent-events/0: BROKEN reordered at entry 2 (alert "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := db(strings.ReplaceAll(tc.name, " ", "_"))
			auditWrite(t, ch.Addr(), d, "", "", auditBatches(same))
			tc.tamper(t, d)
			rc, out := auditVerify("verify", "--clickhouse.addr", ch.Addr(), "--clickhouse.database", d)
			if rc != tc.rc || !strings.Contains(out, tc.want) {
				t.Fatalf("rc %d, output:\n%s\nwant rc %d and %q", rc, out, tc.rc, tc.want)
			}
			if tc.rc != 0 && !strings.Contains(out, "2 chains, 1 broken") {
				t.Errorf("the other chain is intact: want it counted so:\n%s", out)
			}
			t.Logf("%s: rc %d\n%s", tc.name, rc, out)
		})
	}

	// The whole history rewritten consistently through vigil's own sink,
	// after the published heads: the chain verifies on its own, but not
	// against the heads, from the topic or from the file `audit heads`
	// exported.
	for _, tc := range []struct {
		name    string
		batches []detector.Batch
		want    string
	}{
		{"tail dropped", auditBatches(same)[:2], "agent-events/0: BROKEN head at entry 6: the chain ends at entry 3, before entry 6"}, // partition 1's chain is gone
		{"rewritten", auditBatches(func(i int) float64 {
			if i == 1 {
				return 10 // a critical alert that never was
			}
			return same(i)
		}), "agent-events/0: BROKEN head at entry 6: entry 6 has hash "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, topic := db(strings.ReplaceAll(tc.name, " ", "_")), "heads-"+strings.ReplaceAll(tc.name, " ", "-")
			auditWrite(t, ch.Addr(), d, broker, topic, auditBatches(same))
			rc, heads := auditVerify("heads", "--kafka.brokers", broker, "--head-topic", topic)
			if rc != 0 || strings.Count(heads, "\n") != 2 || !strings.Contains(heads, `"topic":"agent-events","partition":0,"seq":6,"hash":"`) {
				t.Fatalf("audit heads: rc %d:\n%s", rc, heads)
			}
			file := filepath.Join(t.TempDir(), "heads.jsonl")
			if err := os.WriteFile(file, []byte(heads), 0o600); err != nil {
				t.Fatal(err)
			}
			if rc, out := auditVerify("verify", "--clickhouse.addr", ch.Addr(), "--clickhouse.database", d, "--head", file); rc != 0 {
				t.Fatalf("before the rewrite: rc %d:\n%s", rc, out)
			}
			for _, tbl := range []string{"audit", "alerts", "revocations"} {
				auditMutate(t, ch, d, "ALTER TABLE "+tbl+" DELETE WHERE 1 = 1")
			}
			auditWrite(t, ch.Addr(), d, "", "", tc.batches)
			if rc, out := auditVerify("verify", "--clickhouse.addr", ch.Addr(), "--clickhouse.database", d); rc != 0 {
				t.Fatalf("the rewritten chain is consistent, yet verify without heads: rc %d:\n%s", rc, out)
			}
			for _, head := range [][]string{{"--head", file}, {"--head-topic", topic, "--kafka.brokers", broker}} {
				rc, out := auditVerify(append([]string{"verify", "--clickhouse.addr", ch.Addr(), "--clickhouse.database", d}, head...)...)
				if rc != exitHead || !strings.Contains(out, tc.want) || !strings.Contains(out, "agent-events/1: BROKEN head at entry 2") {
					t.Fatalf("verify %v: rc %d, output:\n%s\nwant rc %d and %q", head, rc, out, exitHead, tc.want)
				}
				t.Logf("%s %v: rc %d\n%s", tc.name, head, rc, out)
			}
		})
	}

	t.Run("usage and errors", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			rc   int
			want string
		}{
			{[]string{}, 2, "vigil audit verify"},
			{[]string{"verify", "--head", "f", "--head-topic", "t"}, 2, "not both"},
			{[]string{"verify", "stray"}, 2, "unexpected argument"},
			{[]string{"verify", "--clickhouse.addr", ch.Addr(), "--clickhouse.database", "no_such_db"}, 1, "no_such_db"},
			{[]string{"verify", "--clickhouse.addr", ch.Addr(), "--clickhouse.database", "default"}, 1, "no audit table"},
			{[]string{"verify", "--clickhouse.addr", ch.Addr(), "--head", "/no/such/file"}, 1, "--head"},
		} {
			if rc, out := auditVerify(tc.args...); rc != tc.rc || !strings.Contains(out, tc.want) {
				t.Errorf("audit %v: rc %d, %q; want rc %d mentioning %q", tc.args, rc, out, tc.rc, tc.want)
			}
		}
	})
}

// vigil run with ClickHouse publishes every chain's head to the heads
// topic, the last when it stops, and exposes their sequence numbers;
// vigil audit verify then finds the chains intact and holding those heads.
func TestRunPublishesAuditHeads(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ClickHouse")
	}
	ch := sinktest.StartClickHouse(t)
	const parts = 2
	addr := startDevbroker(t, "--topic", "agent-events:2")
	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Seed = 12, 3, 2, 3, 5
	msgs := simMessages(t, cfg)
	produce(t, addr, msgs, 0)
	conf := writeFile(t, t.TempDir(), "vigil.yaml", fmt.Sprintf(`
kafka:
  checkpoint_interval: 300ms
  flush_interval: 200ms
outputs:
  stdout: false
  clickhouse:
    enabled: true
    addr: [%q]
    database: heads_test
    audit_heads:
      enabled: true
      topic: heads-run
      interval: 200ms
`, ch.Addr()))
	var stdout, stderr syncBuffer
	web, rc := startRun(t, addr, "heads", &stdout, &stderr, "--config", conf)
	waitFor(t, 60*time.Second, "every event consumed and committed", func() bool {
		c, e := groupProgress(t, addr, "heads", parts)
		return c == e && e == int64(len(msgs))
	})
	body := scrape(t, web)
	promtoolCheckMetrics(t, body)
	if metricSum(body, "vigil_audit_chain_head_sequence") == 0 {
		t.Fatalf("no vigil_audit_chain_head_sequence: the scenario must raise alerts:\n%s", tail(stderr.String(), 2000))
	}
	sigterm(t, rc, &stderr)
	if !strings.Contains(stderr.String(), "created the audit heads topic") || !strings.Contains(stderr.String(), `msg="audit chain head"`) {
		t.Errorf("the log does not show the heads topic created and heads published:\n%s", tail(stderr.String(), 3000))
	}

	rcode, heads := auditVerify("heads", "--kafka.brokers", addr, "--head-topic", "heads-run")
	if rcode != 0 || heads == "" {
		t.Fatalf("audit heads: rc %d:\n%s", rcode, heads)
	}
	// The last head published of each chain is its end in ClickHouse.
	last := map[string]uint64{}
	for _, l := range strings.Split(strings.TrimSpace(heads), "\n") {
		h, err := parseHead([]byte(l))
		if err != nil {
			t.Fatal(err)
		}
		last[h.Key()] = max(last[h.Key()], h.Seq)
	}
	for key, seq := range last {
		topic, part, _ := strings.Cut(key, "/")
		got := strings.TrimSpace(ch.Query(t, fmt.Sprintf("SELECT max(seq) FROM heads_test.audit WHERE topic = '%s' AND kafka_partition = %s", topic, part)))
		if got != fmt.Sprint(seq) {
			t.Errorf("%s: last published head %d, chain ends at %s", key, seq, got)
		}
	}
	rcode, out := auditVerify("verify", "--clickhouse.addr", ch.Addr(), "--clickhouse.database", "heads_test", "--head-topic", "heads-run", "--kafka.brokers", addr)
	if rcode != 0 || !strings.Contains(out, "0 broken") {
		t.Fatalf("audit verify: rc %d:\n%s", rcode, out)
	}
	t.Logf("%s", out)
}
