package alertmanager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// Integration tests against Debian's prometheus-alertmanager (0.25),
// queried with amtool.

// queried is an alert as `amtool alert query -o json` prints it.
type queried struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Status       struct {
		State string `json:"state"`
	} `json:"status"`
}

// query returns the active alerts of am (amtool's default) by agent_id.
func query(t *testing.T, am *sinktest.Alertmanager, matchers ...string) map[string]queried {
	t.Helper()
	out := am.Query(t, append([]string{"-o", "json"}, matchers...)...)
	var qs []queried
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		t.Fatalf("amtool output %q: %v", out, err)
	}
	m := make(map[string]queried, len(qs))
	for _, q := range qs {
		m[q.Labels["agent_id"]+"/"+q.Labels["kind"]] = q
	}
	return m
}

// eventually polls cond every 100ms for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// liveAlert is alert() detected now (the real clock).
func liveAlert(agent, kind string, sev detector.Severity) *detector.Alert {
	a := alert(agent, kind, sev, 0)
	now := time.Now().UTC().Truncate(time.Second)
	a.WindowStart, a.WindowEnd, a.DetectedAt = now.Add(-5*time.Minute), now, now
	a.AlertID = detector.AlertID(agent, a.WindowStart.UnixNano(), kind)
	return a
}

func liveWindow(agent string, sev detector.Severity) detector.WindowRecord {
	now := time.Now()
	return detector.WindowRecord{AgentID: agent, AgentClass: "payments", Start: now.UnixNano(), End: now.Add(5 * time.Minute).UnixNano(), Severity: sev}
}

func TestAlertmanagerFireAndResolve(t *testing.T) {
	am := sinktest.StartAlertmanager(t)
	s := newTestSink(t, nil, Config{GeneratorURL: "http://analyst.example/alerts/{alert_id}"}, am.URL())
	ctx := context.Background()
	bot, other := "spiffe://bank.example/agent/payments-bot-07", "spiffe://bank.example/agent/fx-bot-02"
	a := liveAlert(bot, detector.KindNovelAccess, detector.SeverityCritical)
	b := detector.Batch{Alerts: []*detector.Alert{
		a,
		liveAlert(bot, detector.KindMoney, detector.SeverityWarning),
		liveAlert(other, detector.KindVolume, detector.SeverityCritical),
	}}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}

	got := query(t, am)
	if len(got) != 3 {
		t.Fatalf("amtool lists %d alerts, want 3: %v", len(got), got)
	}
	q := got[bot+"/novel_access"]
	wantLabels := map[string]string{"alertname": "VigilAgentAnomaly", "agent_id": bot, "agent_class": "payments", "severity": "critical", "kind": "novel_access"}
	if len(q.Labels) != len(wantLabels) {
		t.Errorf("labels %v, want exactly %v", q.Labels, wantLabels)
	}
	for k, v := range wantLabels {
		if q.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, q.Labels[k], v)
		}
	}
	if want := "agent " + bot + " (payments) scored 93 (critical): new_targets 14 vs expected 0.2 (z 9.1)"; q.Annotations["summary"] != want {
		t.Errorf("summary %q, want %q", q.Annotations["summary"], want)
	}
	if q.Annotations["alert_id"] != a.AlertID || !strings.Contains(q.Annotations["description"], "new_targets: value 14") {
		t.Errorf("annotations %v", q.Annotations)
	}
	if want := "http://analyst.example/alerts/" + a.AlertID; q.GeneratorURL != want {
		t.Errorf("generatorURL %q, want %q", q.GeneratorURL, want)
	}
	if q.Status.State != "active" || !q.StartsAt.Equal(a.DetectedAt) || q.EndsAt.Before(time.Now().Add(14*time.Minute)) {
		t.Errorf("state %s, startsAt %v (want %v), endsAt %v (want ~now+15m)", q.Status.State, q.StartsAt, a.DetectedAt, q.EndsAt)
	}
	// The plain output, as an analyst sees it.
	if out := am.Query(t, "agent_id="+bot); !strings.Contains(out, "VigilAgentAnomaly") || !strings.Contains(out, "scored 93") {
		t.Errorf("amtool alert query agent_id=%s:\n%s", bot, out)
	}

	// The bot is normal again: both its alerts resolve, the other stays.
	if err := s.Write(ctx, detector.Batch{Windows: []detector.WindowRecord{liveWindow(bot, detector.SeverityNone)}}); err != nil {
		t.Fatal(err)
	}
	got = query(t, am)
	if _, ok := got[other+"/volume"]; len(got) != 1 || !ok {
		t.Fatalf("after the bot's normal window amtool lists %v, want only %s", got, other)
	}
	if n := firing(s); n != 1 {
		t.Errorf("%d firing, want 1", n)
	}
}

// An alert no one refreshes resolves by itself after resolve_after.
func TestAlertmanagerExpiry(t *testing.T) {
	am := sinktest.StartAlertmanager(t)
	s := newTestSink(t, nil, Config{ResendInterval: 200 * time.Millisecond, ResolveAfter: 2 * time.Second}, am.URL())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{liveAlert("quiet", detector.KindVolume, detector.SeverityCritical)}}); err != nil {
		t.Fatal(err)
	}
	if len(query(t, am)) != 1 {
		t.Fatal("alert not listed")
	}
	if !eventually(6*time.Second, func() bool { return len(query(t, am)) == 0 }) {
		t.Fatal("alert still active well after resolve_after")
	}
	if n := firing(s); n != 0 {
		t.Errorf("%d firing, want 0", n)
	}
}

// An HA pair: with one member down Write succeeds through the other, and
// the re-send delivers the alert to the stopped one once it is back
// (Alertmanager keeps alerts in memory: a restarted one has none).
func TestAlertmanagerHA(t *testing.T) {
	am1, am2 := sinktest.StartAlertmanager(t), sinktest.StartAlertmanager(t)
	s := newTestSink(t, nil, Config{ResendInterval: 300 * time.Millisecond, ResolveAfter: time.Minute, Timeout: 2 * time.Second}, am1.URL(), am2.URL())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	am2.Stop(t)
	a := liveAlert("ha-agent", detector.KindCredential, detector.SeverityCritical)
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{a}}); err != nil {
		t.Fatalf("Write with one Alertmanager of two down: %v", err)
	}
	if _, ok := query(t, am1)["ha-agent/credential_misuse"]; !ok {
		t.Fatal("the running Alertmanager does not have the alert")
	}
	am2.Start(t)
	if !eventually(5*time.Second, func() bool { _, ok := query(t, am2)["ha-agent/credential_misuse"]; return ok }) {
		t.Fatal("the re-send did not deliver the alert to the restarted Alertmanager")
	}
	q := query(t, am2)["ha-agent/credential_misuse"]
	if !q.StartsAt.Equal(a.DetectedAt) || q.Annotations["alert_id"] != a.AlertID {
		t.Errorf("re-sent alert: startsAt %v (want %v), alert_id %q", q.StartsAt, a.DetectedAt, q.Annotations["alert_id"])
	}

	// Both down: Write fails, and not permanently (the caller retries).
	am1.Stop(t)
	am2.Stop(t)
	err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{liveAlert("ha-agent-2", detector.KindVolume, detector.SeverityWarning)}})
	if err == nil || errors.Is(err, detector.ErrPermanent) {
		t.Fatalf("Write with every Alertmanager down: %v, want a retryable error", err)
	}
	for _, u := range []string{am1.URL(), am2.URL()} {
		if !strings.Contains(err.Error(), u) {
			t.Errorf("error %q does not name %s", err, u)
		}
	}
	// Back up: the retried batch and the re-send deliver everything.
	am1.Start(t)
	am2.Start(t)
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{liveAlert("ha-agent-2", detector.KindVolume, detector.SeverityWarning)}}); err != nil {
		t.Fatal(err)
	}
	for _, am := range []*sinktest.Alertmanager{am1, am2} {
		if !eventually(5*time.Second, func() bool { return len(query(t, am)) == 2 }) {
			t.Errorf("%s lists %v, want both alerts", am.URL(), query(t, am))
		}
	}
}

// Hostile ids (60 KiB, control, bidi and invalid UTF-8 bytes: all within
// the decoder's limit) reach a real Alertmanager bounded and distinct, and
// a batch of 1000 of them is one small POST: unbounded, that POST was about
// 120 MB and took Alertmanager 0.25 about 5 s of the 10 s timeout here, so
// a slower host would time it out and retry it forever.
func TestAlertmanagerHostileIDs(t *testing.T) {
	am := sinktest.StartAlertmanager(t)
	s := newTestSink(t, nil, Config{GeneratorURL: "http://analyst.example/agents/{agent_id}"}, am.URL())
	long := strings.Repeat("a", 60<<10)
	var as []*detector.Alert
	for i := range 1000 {
		a := liveAlert(fmt.Sprintf("%s-%04d", long, i), detector.KindVolume, detector.SeverityCritical)
		a.AgentClass = long
		as = append(as, a)
	}
	odd := liveAlert("ctl\x00\x01\x1b[31m\u202e\u200b bad\xff\xfe", detector.KindVolume, detector.SeverityCritical)
	as = append(as, odd)
	start := time.Now()
	if err := s.Write(context.Background(), detector.Batch{Alerts: as}); err != nil {
		t.Fatalf("Write: %v", err)
	}
	t.Logf("%d alerts with 60 KiB ids posted in %v", len(as), time.Since(start).Round(time.Millisecond))
	got := query(t, am)
	if len(got) != len(as) {
		t.Fatalf("Alertmanager lists %d alerts, want %d", len(got), len(as))
	}
	for k, q := range got {
		if len(q.Labels["agent_id"]) > maxID || len(q.Labels["agent_class"]) > maxID {
			t.Fatalf("%.40q: labels of %d and %d bytes", k, len(q.Labels["agent_id"]), len(q.Labels["agent_class"]))
		}
	}
	if _, ok := got[clean(odd.AgentID)+"/"+detector.KindVolume]; !ok {
		t.Errorf("no alert labelled %q", clean(odd.AgentID))
	}
}

// A real Alertmanager that serves HTTPS only and requires a client
// certificate (--web.config.file, client_auth_type
// RequireAndVerifyClientCert), with a CA made in the test. With the CA and
// the client certificate, alerts arrive; without the CA, with another CA,
// or without the client certificate, Write fails at once with a permanent
// error that says what is wrong, rather than retrying a handshake that
// fails the same way every time.
func TestAlertmanagerTLSClientCertificate(t *testing.T) {
	pki := sinktest.NewPKI(t, "vigil test CA")
	am := sinktest.StartAlertmanagerTLS(t, pki)
	ctx := context.Background()
	bot := "spiffe://bank.example/agent/tls-bot"
	tlsOK := TLSConfig{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	s := newTestSink(t, nil, Config{TLS: tlsOK}, am.URL())
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{liveAlert(bot, detector.KindVolume, detector.SeverityCritical)}}); err != nil {
		t.Fatalf("with the CA and a client certificate: %v", err)
	}
	if got := query(t, am); len(got) != 1 || got[bot+"/"+detector.KindVolume].Labels["agent_id"] != bot {
		t.Fatalf("Alertmanager has %v, want the one alert", got)
	}

	other := sinktest.NewPKI(t, "another CA")
	for _, tc := range []struct {
		name string
		tls  TLSConfig
		want string
	}{
		{"no CA (system roots)", TLSConfig{CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "vigil does not trust the server's certificate: check alertmanager.tls.ca_file"},
		{"the wrong CA", TLSConfig{CAFile: other.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "certificate signed by unknown authority"},
		{"the wrong server name", TLSConfig{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey, ServerName: "am.example"}, "alertmanager.tls.server_name"},
		{"no client certificate", TLSConfig{CAFile: pki.CAFile}, "the server refused vigil's client certificate, or its absence"},
		{"a client certificate of another CA", TLSConfig{CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey}, "check alertmanager.tls.cert_file"},
	} {
		s := newTestSink(t, nil, Config{TLS: tc.tls, Timeout: 5 * time.Second}, am.URL())
		start := time.Now()
		err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{liveAlert(bot, detector.KindMoney, detector.SeverityWarning)}})
		switch {
		case !errors.Is(err, detector.ErrPermanent):
			t.Errorf("%s: %v, want a permanent error", tc.name, err)
		case !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "TLS") || !strings.Contains(err.Error(), am.URL()):
			t.Errorf("%s: %q does not say %q, TLS and the URL", tc.name, err, tc.want)
		case time.Since(start) > 3*time.Second:
			t.Errorf("%s: failed after %v, want at once", tc.name, time.Since(start))
		}
	}
	if got := query(t, am); len(got) != 1 {
		t.Errorf("Alertmanager has %d alerts, want still 1: %v", len(got), got)
	}
}
