package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// vigil demo on a tiny fleet at a high speed: it streams everything through
// the dev broker into both members, exits 0 once every offset is committed,
// shows alerts as they fire and ends with the detection-quality table.
func TestDemo(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	var stdout, stderr syncBuffer
	began := time.Now()
	rc := run([]string{"demo", "--agents", "12", "--days", "3", "--warmup-days", "2", "--incidents", "2", "--speed", "200000"}, nil, &stdout, &stderr)
	sum, view := stdout.String(), stderr.String()
	if rc != 0 {
		t.Fatalf("demo: rc %d\nview:\n%s\nsummary:\n%s", rc, view, sum)
	}
	t.Logf("demo took %v\n%s%s", time.Since(began), view, sum)
	for _, want := range []string{"== vigil demo: summary", "every offset committed", "kind  ", "recall", "revocations   "} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	// The demo's enforce policy runs as dry run: events are unverified.
	if !strings.Contains(view, "enforce runs as dry run") || strings.Contains(sum, "revocations   ") && !strings.Contains(sum, "; 0 enforce,") {
		t.Errorf("the demo enforced on unverified events, or did not say it would not:\n%s%s", view, sum)
	}
	// The view is not a terminal here: plain lines, no escape codes.
	if strings.Contains(view, "\x1b[") {
		t.Errorf("plain view has escape codes:\n%q", view)
	}
	if !strings.Contains(view, "demo: done |") || !strings.Contains(view, "lag 0 |") {
		t.Errorf("view lacks the final progress line (done, lag 0):\n%s", view)
	}
	m := regexp.MustCompile(`(?m)^detected\s+(\d+)`).FindStringSubmatch(sum)
	if m == nil {
		t.Fatalf("no detected count in the summary:\n%s", sum)
	}
	if n, _ := strconv.Atoi(m[1]); n == 0 {
		t.Errorf("no incident detected:\n%s", sum)
	}
	if !strings.Contains(view, "alert ") || !strings.Contains(view, "✓ inc-") {
		t.Errorf("the view shows no alert catching an incident:\n%s", view)
	}
	// Every message produced was consumed.
	p := regexp.MustCompile(`stream\s+([\d,]+) messages`).FindStringSubmatch(sum)
	c := regexp.MustCompile(`consumed\s+([\d,]+) messages`).FindStringSubmatch(sum)
	if p == nil || c == nil || p[1] != c[1] {
		t.Errorf("produced %v, consumed %v: want equal", p, c)
	}
}

// Interrupted mid-stream, the demo stops its members and the broker,
// prints a partial summary and reports the interruption.
func TestDemoInterrupted(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	o := demoOptions{refresh: 50 * time.Millisecond, plainEvery: 50 * time.Millisecond, speed: 3000}
	o.sim.Agents, o.sim.Days, o.sim.WarmupDays, o.sim.Incidents, o.sim.Seed = 12, 3, 2, 2, 1
	var out, view syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- demo(ctx, o, &out, &view, false) }()
	waitFor(t, 20*time.Second, "events to be produced", func() bool {
		return regexp.MustCompile(`produced [1-9]`).MatchString(view.String())
	})
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, errInterrupted) {
			t.Errorf("demo: %v, want errInterrupted", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("demo did not stop within 20s of the interruption")
	}
	if s := out.String(); !strings.Contains(s, "stopped before the end of the stream") || !strings.Contains(s, "(partial") {
		t.Errorf("no partial summary:\n%s", s)
	}
	if !strings.Contains(view.String(), "demo: interrupted |") {
		t.Errorf("view does not say it was interrupted:\n%s", view.String())
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		rc   int
		want string
	}{
		{[]string{"demo", "--agents", "3"}, 1, "agents"},
		{[]string{"demo", "--days", "0"}, 1, "--days"},
		{[]string{"demo", "--days", "2", "--warmup-days", "2"}, 1, "warmup_days"},
		{[]string{"demo", "--speed", "-1"}, 1, "--speed"},
		{[]string{"demo", "stray"}, 2, "unexpected argument"},
		{[]string{"demo", "--nope"}, 2, "nope"},
	} {
		var out, errb bytes.Buffer
		if rc := run(tc.args, nil, &out, &errb); rc != tc.rc || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: rc %d, stderr %q; want rc %d mentioning %s", tc.args, rc, errb.String(), tc.rc, tc.want)
		}
	}
}

// vigil demo with the real sinks attached: the alerts it shows are in
// ClickHouse (once each) and reached Alertmanager (its own counter).
func TestDemoWithSinks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ClickHouse and Alertmanager")
	}
	ch := sinktest.StartClickHouse(t)
	am := sinktest.StartAlertmanager(t)
	var stdout, stderr syncBuffer
	rc := run([]string{"demo", "--agents", "12", "--days", "3", "--warmup-days", "2", "--incidents", "2", "--speed", "200000",
		"--clickhouse.addr", ch.Addr(), "--alertmanager.url", am.URL()}, nil, &stdout, &stderr)
	sum := stdout.String()
	if rc != 0 {
		t.Fatalf("demo: rc %d\n%s\n%s", rc, stderr.String(), sum)
	}
	m := regexp.MustCompile(`(?m)^alerts\s+(\d+):`).FindStringSubmatch(sum)
	if m == nil {
		t.Fatalf("no alert count in the summary:\n%s", sum)
	}
	n, _ := strconv.Atoi(m[1])
	if n == 0 {
		t.Fatalf("the demo raised no alert:\n%s", sum)
	}
	if got := strings.TrimSpace(ch.Query(t, "SELECT uniqExact(alert_id) FROM vigil_demo.alerts FINAL")); got != m[1] {
		t.Errorf("ClickHouse holds %s alerts, the demo showed %d", got, n)
	}
	if got := strings.TrimSpace(ch.Query(t, "SELECT count() FROM vigil_demo.windows FINAL")); got == "0" {
		t.Error("no windows in ClickHouse")
	}
	if !strings.Contains(sum, "amtool --alertmanager.url="+am.URL()) || !strings.Contains(sum, "vigil_demo.alerts") {
		t.Errorf("the summary does not say where the alerts went:\n%s", sum)
	}
	received := amReceived(t, am.URL())
	if received < 1 {
		t.Errorf("Alertmanager received %v firing alerts", received)
	}
	t.Logf("%d alerts; Alertmanager received %.0f firing alert posts", n, received)
}

// amReceived reads Alertmanager's own count of firing alerts received.
func amReceived(t *testing.T, url string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return metricSum(string(b), `alertmanager_alerts_received_total{status="firing"}`) +
		metricSum(string(b), `alertmanager_alerts_received_total{status="firing",version="v2"}`)
}
