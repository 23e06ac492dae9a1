package alertmanager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vigil-sec/vigil/detector"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// TestPayloadGolden pins the JSON body POSTed to /api/v2/alerts.
func TestPayloadGolden(t *testing.T) {
	am, c := newFakeAM(t), newClock()
	s := newTestSink(t, c, Config{GeneratorURL: "https://analyst.example/alerts/{alert_id}?agent={agent_id}"}, am.srv.URL)
	a := alert("spiffe://bank.example/agent/payments-bot-07", detector.KindNovelAccess, detector.SeverityCritical, 0)
	c.advance(6 * time.Minute)
	if err := s.Write(context.Background(), detector.Batch{Alerts: []*detector.Alert{a}}); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := json.Indent(&got, am.raw[0], "", "  "); err != nil {
		t.Fatal(err)
	}
	got.WriteByte('\n')
	golden := filepath.Join("testdata", "payload.golden.json")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("payload differs from %s (go test -update rewrites it):\n%s", golden, got.Bytes())
	}
}

func TestLabelsAndAnnotations(t *testing.T) {
	a := alert("agent-1", detector.KindNovelAccess, detector.SeverityCritical, 0)
	l := labels("VigilAgentAnomaly", a)
	want := map[string]string{"alertname": "VigilAgentAnomaly", "agent_id": "agent-1", "agent_class": "payments", "severity": "critical", "kind": "novel_access"}
	if len(l) != len(want) {
		t.Errorf("labels %v, want exactly %v", l, want)
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("label %s = %q, want %q", k, l[k], v)
		}
	}
	a.AgentClass = ""
	if _, ok := labels("X", a)["agent_class"]; ok {
		t.Error("empty agent_class sent as a label (Alertmanager drops empty labels)")
	}
	a.AgentClass = "payments"

	an := annotations(a)
	if want := "agent agent-1 (payments) scored 93 (critical): new_targets 14 vs expected 0.2 (z 9.1)"; an["summary"] != want {
		t.Errorf("summary %q, want %q", an["summary"], want)
	}
	if want := "new_targets: value 14, expected 0.2, z 9.1, contribution 0.62"; !strings.Contains(an["description"], want) {
		t.Errorf("description %q lacks %q", an["description"], want)
	}
	for _, k := range []string{"alert_id", "window_start", "window_end", "detected_at", "score", "baseline", "reasons"} {
		if an[k] == "" {
			t.Errorf("annotation %s missing", k)
		}
	}
	var rs []map[string]any
	if err := json.Unmarshal([]byte(an["reasons"]), &rs); err != nil || len(rs) != 2 {
		t.Errorf("reasons annotation %q: %v", an["reasons"], err)
	}

	a.AgentID = "bad\xffid"
	if l := labels("X", a); l["agent_id"] != "bad\uFFFDid" {
		t.Errorf("invalid UTF-8 kept: %q", l["agent_id"])
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{14: "14", 0.2: "0.2", 9.123: "9.1", 0.6234: "0.62", 123456.7: "123457", 0: "0", 0.00012345: "0.00012", -2.25: "-2.3"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestGeneratorURL(t *testing.T) {
	got := expandGenerator("http://analyst.example/alerts/{alert_id}?agent={agent_id}&kind={kind}", "abc", "spiffe://bank/agent/a b&c", "volume")
	if want := "http://analyst.example/alerts/abc?agent=spiffe%3A%2F%2Fbank%2Fagent%2Fa%20b%26c&kind=volume"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("s3cr3t-value\n"), 0o600)
	for _, tc := range []struct {
		name, field string
		mod         func(*Config)
	}{
		{"ok", "", func(*Config) {}},
		{"no urls", "alertmanager.urls", func(c *Config) { c.URLs = nil }},
		{"bad scheme", "alertmanager.urls[0]", func(c *Config) { c.URLs = []string{"ftp://am:9093"} }},
		{"credentials in url", "alertmanager.urls[0]", func(c *Config) { c.URLs = []string{"http://user:s3cr3t-value@am:9093"} }},
		{"duplicate", "alertmanager.urls[1]", func(c *Config) { c.URLs = []string{"http://am:9093", "http://am:9093"} }},
		{"resolve before resend", "alertmanager.resolve_after", func(c *Config) { c.ResolveAfter, c.ResendInterval = time.Second, time.Minute }},
		{"half basic auth", "alertmanager.basic_auth", func(c *Config) { c.BasicAuth.Username = "vigil" }},
		{"basic and bearer", "alertmanager.bearer_token_file", func(c *Config) {
			c.BasicAuth = BasicAuth{Username: "vigil", PasswordFile: secret}
			c.BearerTokenFile = secret
		}},
		{"cert without key", "alertmanager.tls", func(c *Config) { c.TLS.CertFile = secret }},
		{"relative generator url", "alertmanager.generator_url", func(c *Config) { c.GeneratorURL = "/alerts/{alert_id}" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.URLs = []string{"http://am-0:9093", "https://am-1.example/prefix/"}
			tc.mod(&c)
			err := c.Validate()
			var ce *detector.ConfigError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.field == "":
			case !errors.As(err, &ce) || ce.Field != tc.field:
				t.Fatalf("error %v, want one naming %s", err, tc.field)
			case strings.Contains(err.Error(), "s3cr3t"):
				t.Fatalf("error %q shows the secret", err)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"http://am:9093":           "http://am:9093/api/v2/alerts",
		"http://am:9093/":          "http://am:9093/api/v2/alerts",
		"https://am.example/pre/":  "https://am.example/pre/api/v2/alerts",
		"https://am.example/pre/x": "https://am.example/pre/x/api/v2/alerts",
	} {
		if got, err := endpoint(in); err != nil || got != want {
			t.Errorf("endpoint(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
}

func TestNewSecretFiles(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for _, c := range []Config{
		{URLs: []string{"http://am:9093"}, BearerTokenFile: missing},
		{URLs: []string{"http://am:9093"}, BearerTokenFile: empty},
		{URLs: []string{"http://am:9093"}, BasicAuth: BasicAuth{Username: "u", PasswordFile: missing}},
		{URLs: []string{"http://am:9093"}, TLS: TLSConfig{CAFile: empty}},
	} {
		if _, err := New(c, nil); err == nil {
			t.Errorf("New(%+v) accepted a missing or empty file", c)
		}
	}
}

// Ids come from events, up to the decoder's 64 KiB: labels, the summary,
// generatorURL and the sink's memory get them bounded (boundID), distinct
// ids stay distinct, the same id gives the same label (its alert is
// refreshed and resolved as one), and the alert shared with the other sinks
// is not changed.
func TestLongIDsAreBounded(t *testing.T) {
	am, c := newFakeAM(t), newClock()
	s := newTestSink(t, c, Config{GeneratorURL: "https://analyst.example/agents/{agent_id}"}, am.srv.URL)
	prefix := strings.Repeat("é", 20<<10) // 40 KiB, 2-byte runes: cuts must respect them
	id1, id2 := prefix+"-one", prefix+"-two"
	a1, a2 := alert(id1, detector.KindVolume, detector.SeverityCritical, 0), alert(id2, detector.KindVolume, detector.SeverityCritical, 0)
	a1.AgentClass = strings.Repeat("c", 60<<10)
	c.advance(6 * time.Minute)
	if err := s.Write(context.Background(), detector.Batch{Alerts: []*detector.Alert{a1, a2}}); err != nil {
		t.Fatal(err)
	}
	if a1.AgentID != id1 || len(a1.AgentClass) != 60<<10 {
		t.Error("the shared alert was changed")
	}
	posted := am.take()
	if len(posted) != 2 {
		t.Fatalf("%d alerts posted, want 2", len(posted))
	}
	if l1, l2 := posted[0].Labels["agent_id"], posted[1].Labels["agent_id"]; l1 == l2 || l1 != boundID(id1) || l2 != boundID(id2) {
		t.Errorf("agent_id labels %.30q… and %.30q… : want distinct, boundID of each", l1, l2)
	}
	body := am.raw[0]
	if len(body) > 2*8<<10 {
		t.Errorf("%d-byte body for two alerts", len(body))
	}
	for _, p := range posted {
		for k, v := range p.Labels {
			if len(v) > maxID || !utf8.ValidString(v) {
				t.Errorf("label %s: %d bytes, valid UTF-8 %v", k, len(v), utf8.ValidString(v))
			}
		}
		if n := len(p.Annotations["summary"]); n > 3*maxID {
			t.Errorf("summary of %d bytes", n)
		}
		if n := len(p.GeneratorURL); n > 4*maxID {
			t.Errorf("generatorURL of %d bytes", n)
		}
	}
	if got := posted[0].Labels["agent_id"]; !strings.HasPrefix(got, prefix[:400]) || !strings.Contains(got, "…") {
		t.Errorf("label %q: want the id's start, … and a digest", got)
	}
	// The same id: the same alert, refreshed; a normal window of agent 1
	// resolves its alert and not agent 2's.
	c.advance(time.Minute)
	again := alert(id1, detector.KindVolume, detector.SeverityCritical, 1)
	again.AgentClass = a1.AgentClass
	b := detector.Batch{Alerts: []*detector.Alert{again}, Windows: []detector.WindowRecord{window(id1, detector.SeverityNone, 2)}}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	posted = am.take()
	if len(posted) != 2 || posted[0].Labels["agent_id"] != boundID(id1) || posted[1].Labels["agent_id"] != boundID(id1) ||
		!posted[1].EndsAt.Equal(c.now()) {
		t.Errorf("refresh and resolution of agent 1: %d alerts posted", len(posted))
	}
	if s.firing.Len() != 1 || len(s.byKey) != 2 {
		t.Errorf("firing %d, remembered %d; want agent 2's firing, agent 1's resolved", s.firing.Len(), len(s.byKey))
	}

	for _, tc := range []struct{ in, want string }{
		{"short", "short"},
		{strings.Repeat("a", maxID), strings.Repeat("a", maxID)},
	} {
		if got := boundID(tc.in); got != tc.want {
			t.Errorf("boundID(%.20q) = %.20q", tc.in, got)
		}
	}
	if got := boundID(strings.Repeat("a", maxID+1)); len(got) > maxID || got == boundID(strings.Repeat("a", maxID+2)) {
		t.Errorf("boundID of %d bytes: %d bytes %q", maxID+1, len(got), got)
	}
}
