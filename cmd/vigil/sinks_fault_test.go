package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/sim"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// simMessages generates a small fleet with incidents as Kafka messages
// keyed by agent_id.
func simMessages(t *testing.T, cfg sim.Config) []kafka.Message {
	t.Helper()
	var ev, truth bytes.Buffer
	if _, err := sim.Generate(cfg, &ev, &truth); err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for _, line := range bytes.Split(ev.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e struct {
			AgentID string `json:"agent_id"`
		}
		json.Unmarshal(line, &e) // invalid lines (the simulator writes some) go unkeyed
		msgs = append(msgs, kafka.Message{Key: []byte(e.AgentID), Value: bytes.Clone(line)})
	}
	return msgs
}

// produce writes msgs to the events topic, spread over d (0: at once).
func produce(t *testing.T, addr string, msgs []kafka.Message, d time.Duration) {
	t.Helper()
	if err := produceMsgs(addr, msgs, d); err != nil {
		t.Fatal(err)
	}
}

func produceMsgs(addr string, msgs []kafka.Message, d time.Duration) error {
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "agent-events", Transport: tr, RequiredAcks: kafka.RequireAll,
		Balancer: &kafka.Murmur2Balancer{}, BatchSize: 1000, BatchTimeout: time.Millisecond}
	defer w.Close()
	chunks := 1
	if d > 0 {
		chunks = 20
	}
	per := (len(msgs) + chunks - 1) / chunks
	for i := 0; i < len(msgs); i += per {
		if err := w.WriteMessages(context.Background(), msgs[i:min(i+per, len(msgs))]...); err != nil {
			return err
		}
		if d > 0 {
			time.Sleep(d / time.Duration(chunks))
		}
	}
	return nil
}

// groupProgress returns the committed offsets of group and the end offsets
// of the events topic, summed over partitions.
func groupProgress(t *testing.T, addr, group string, parts int) (committed, end int64) {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}
	ids := make([]int, parts)
	var lo []kafka.OffsetRequest
	for i := range ids {
		ids[i] = i
		lo = append(lo, kafka.LastOffsetOf(i))
	}
	of, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{"agent-events": ids}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range of.Topics["agent-events"] {
		committed += max(p.CommittedOffset, 0)
	}
	l, err := cl.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{"agent-events": lo}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range l.Topics["agent-events"] {
		end += p.LastOffset
	}
	return committed, end
}

func scrape(t *testing.T, web string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(web + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

// ClickHouse and Alertmanager are each stopped for 30 s while events flow.
// Meanwhile vigil commits nothing past what they have not stored; when they
// return, every alert and window row is in ClickHouse exactly once and
// the alerts reached Alertmanager.
func TestSinksSurviveOutages(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s outage test")
	}
	ch := sinktest.StartClickHouse(t)
	am := sinktest.StartAlertmanager(t)
	const parts = 4
	addr := startDevbroker(t, "--topic", "agent-events:"+strconv.Itoa(parts))

	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Seed = 18, 4, 2, 5, 11
	msgs := simMessages(t, cfg)
	half := len(msgs) * 6 / 10
	produce(t, addr, msgs[:half], 0)

	dir := t.TempDir()
	conf := writeFile(t, dir, "vigil.yaml", fmt.Sprintf(`
kafka:
  checkpoint_interval: 300ms
  flush_interval: 200ms
  retry_backoff: 100ms
  max_retry_backoff: 1s
  idle_timeout: 10m
outputs:
  alertmanager:
    urls: [%q]
    resend_interval: 2s
  clickhouse:
    enabled: true
    addr: [%q]
    database: fault_test
`, am.URL(), ch.Addr()))
	var stdout, stderr syncBuffer
	rc := make(chan int, 1)
	go func() {
		rc <- run([]string{"run", "--config", conf, "--kafka.brokers", addr, "--kafka.group", "fault", "--web.listen-address", "127.0.0.1:0"}, nil, &stdout, &stderr)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vigil run stderr (tail):\n%s", tail(stderr.String(), 3000))
		}
	})
	var web string
	waitFor(t, 20*time.Second, "vigil run to start", func() bool {
		if i := strings.Index(stderr.String(), "web=http://"); i >= 0 {
			web = strings.Fields(stderr.String()[i+4:])[0]
			return true
		}
		return false
	})
	waitFor(t, 60*time.Second, "the first part to be consumed and committed", func() bool {
		c, e := groupProgress(t, addr, "fault", parts)
		return c == e && e == int64(half)
	})
	rowsBefore := ch.Query(t, "SELECT count() FROM fault_test.windows")

	// Outages while the rest of the stream arrives: Alertmanager down for
	// 30 s; once an alert is blocked by it, ClickHouse down for 30 s too.
	// (Alertmanager first: a partition blocked on ClickHouse writes
	// nothing, so alerts behind it would never meet the Alertmanager
	// outage.)
	am.Stop(t)
	amDown := time.Now()
	produced := make(chan error, 1)
	go func() { produced <- produceMsgs(addr, msgs[half:], 15*time.Second) }()
	waitFor(t, 20*time.Second, "an alert blocked by the Alertmanager outage", func() bool {
		return metricSum(scrape(t, web), `vigil_sink_retries_total{sink="alertmanager"}`) > 0
	})
	ch.Stop(t)
	chDown := time.Now()
	waitFor(t, 20*time.Second, "outputs blocked by the ClickHouse outage", func() bool {
		m := scrape(t, web)
		return metricSum(m, `vigil_sink_retries_total{sink="clickhouse"}`) > 0 && metricSum(m, `vigil_sink_queue_outputs{sink="clickhouse"}`) > 0
	})
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(amDown.Add(30 * time.Second)))
	am.Start(t)
	time.Sleep(time.Until(chDown.Add(30 * time.Second)))
	c, e := groupProgress(t, addr, "fault", parts)
	if c >= e {
		t.Fatalf("everything committed (%d of %d) while ClickHouse was down", c, e)
	}
	if c > int64(half)+int64(len(msgs)-half)/2 {
		t.Errorf("committed %d of %d during the outages: more than output written before them allows", c, e)
	}
	t.Logf("outages: committed %d of %d messages (%d before them); ClickHouse down %v after Alertmanager", c, e, half, chDown.Sub(amDown).Round(100*time.Millisecond))
	ch.Start(t)
	up := time.Now()
	waitFor(t, 90*time.Second, "everything committed after the sinks returned", func() bool {
		c, e := groupProgress(t, addr, "fault", parts)
		return c == e && e == int64(len(msgs))
	})
	t.Logf("caught up %v after the sinks returned", time.Since(up).Round(100*time.Millisecond))
	metrics := scrape(t, web)
	promtoolCheckMetrics(t, metrics) // with every sink's metrics present
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := <-rc; code != 0 {
		t.Fatalf("vigil run exited %d", code)
	}

	// Every alert on stdout is in ClickHouse exactly once.
	ids := map[string]bool{}
	var alertLines int
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var a struct {
			AlertID string `json:"alert_id"`
		}
		if json.Unmarshal([]byte(l), &a) == nil && a.AlertID != "" {
			ids[a.AlertID] = true
			alertLines++
		}
	}
	if len(ids) == 0 {
		t.Fatal("no alerts: the scenario must produce some")
	}
	got := strings.Fields(ch.Query(t, "SELECT count(), uniqExact(alert_id) FROM fault_test.alerts FINAL"))
	if want := strconv.Itoa(len(ids)); len(got) != 2 || got[0] != want || got[1] != want {
		t.Errorf("ClickHouse alerts FINAL: count, distinct = %v; want %s alerts once each", got, want)
	}
	inCH := strings.Fields(ch.Query(t, "SELECT alert_id FROM fault_test.alerts FINAL"))
	for _, id := range inCH {
		delete(ids, id)
	}
	if len(ids) > 0 {
		t.Errorf("%d alerts missing from ClickHouse", len(ids))
	}
	windows := metricSum(metrics, "vigil_detector_windows_closed_total")
	got = strings.Fields(ch.Query(t, "SELECT count(), uniqExact(agent_id, window_start) FROM fault_test.windows FINAL"))
	if want := strconv.Itoa(int(windows)); len(got) != 2 || got[0] != want || got[1] != want {
		t.Errorf("ClickHouse windows FINAL: count, distinct = %v; want the %s windows closed, once each", got, want)
	}
	t.Logf("alerts %d (lines %d), windows %.0f (rows before the outage %s), raw window rows %s", len(inCH), alertLines, windows,
		strings.TrimSpace(rowsBefore), strings.TrimSpace(ch.Query(t, "SELECT count() FROM fault_test.windows")))
	// Alertmanager got every alert (the sink counts what it accepted), and
	// has them: firing, or resolved by a normal window since.
	if n := metricSum(metrics, `vigil_sink_outputs_total{output="alerts",sink="alertmanager"}`); int(n) < alertLines {
		t.Errorf("Alertmanager accepted %.0f alerts, vigil produced %d", n, alertLines)
	}
	if metricSum(metrics, `vigil_sink_retries_total{sink="alertmanager"}`) == 0 {
		t.Error("no retries against Alertmanager: the outage did not block an alert")
	}
	// The Alertmanager restarted after the outage has the alerts that
	// waited for it (its own counter).
	if n := amReceived(t, am.URL()); n < 1 {
		t.Errorf("the restarted Alertmanager received %v alerts", n)
	}
	t.Logf("amtool:\n%s", am.Query(t))
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
