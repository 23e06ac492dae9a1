package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/sim"
)

// Issue 12, defect 2: a second consumer group on the same broker, with the
// default state topic, restored the first group's checkpoints, resumed at
// their offsets (the end of the topic) and consumed nothing, without a
// word. Checkpoints are bound to the group (and topic) they were taken
// for: group "other" must either consume every event or stop with an
// error that says to give it a state topic of its own — never run while
// consuming nothing. vigil refuses; then, with a state topic of its own,
// group "other" consumes every event and writes the same alerts as the
// first group, which the refused start left untouched in vigil-state.
func TestRunStateBoundToGroup(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	const parts = 2
	addr := startDevbroker(t, "--topic", "agent-events:2")
	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Seed = 12, 3, 2, 3, 5
	msgs := simMessages(t, cfg)
	produce(t, addr, msgs, 0)
	total := int64(len(msgs))
	dir := t.TempDir()
	const base = `
kafka:
  checkpoint_interval: 300ms
  flush_interval: 200ms
  retry_backoff: 100ms
  max_retry_backoff: 1s
  idle_timeout: 10m
`
	conf := writeFile(t, dir, "vigil.yaml", base)

	// consume runs group to the end of the events topic and stops it; it
	// returns the alert ids it wrote.
	consume := func(group string, args ...string) map[string]bool {
		t.Helper()
		var stdout, stderr syncBuffer
		web, rc := startRun(t, addr, group, &stdout, &stderr, args...)
		deadline := time.Now().Add(60 * time.Second)
		for {
			c, e := groupProgress(t, addr, group, parts)
			n := metricSum(scrape(t, web), "vigil_consumer_messages_total")
			if c == e && e == total && n == float64(total) {
				break
			}
			select {
			case code := <-rc:
				t.Fatalf("group %s: vigil run exited %d having read %v of %d events:\n%s", group, code, n, total, tail(stderr.String(), 3000))
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				sigterm(t, rc, &stderr)
				t.Fatalf("group %s: committed %d of %d, read %v events after 60s:\n%s", group, c, e, n, tail(stderr.String(), 3000))
			}
		}
		sigterm(t, rc, &stderr)
		return alertIDs(t, stdout.String())
	}

	alertsA := consume("vigil", "--config", conf)
	if len(alertsA) == 0 {
		t.Fatal("group vigil wrote no alert")
	}
	stateA := topicEnd(t, addr, "vigil-state", parts)

	// Group other, same (default) state topic.
	var stdout, stderr syncBuffer
	web, rc := startRun(t, addr, "other", &stdout, &stderr, "--config", conf)
	deadline := time.Now().Add(30 * time.Second)
	var code int
wait:
	for {
		select {
		case code = <-rc:
			break wait
		case <-time.After(100 * time.Millisecond):
		}
		c, e := groupProgress(t, addr, "other", parts)
		n := metricSum(scrape(t, web), "vigil_consumer_messages_total")
		if c == e && e == total && n == float64(total) {
			sigterm(t, rc, &stderr)
			t.Logf("group other consumed every event on the shared state topic")
			return
		}
		if time.Now().After(deadline) {
			sigterm(t, rc, &stderr)
			t.Fatalf("group other on group vigil's state topic: still running after 30s, committed %d of %d, read %v of %d events (running and consuming nothing is the defect):\n%s",
				c, e, n, total, tail(stderr.String(), 3000))
		}
	}
	if code == 0 {
		t.Fatalf("group other exited 0 on group vigil's state:\n%s", tail(stderr.String(), 3000))
	}
	t.Logf("group other exited %d: %s", code, tail(strings.TrimSpace(stderr.String()), 600))
	for _, want := range []string{`consumer group "vigil"`, `"other"`, "kafka.state_topic"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("group other's error does not say %s:\n%s", want, tail(stderr.String(), 3000))
		}
	}
	if c, _ := groupProgress(t, addr, "other", parts); c != 0 {
		t.Errorf("group other committed offsets summing to %d, want none", c)
	}
	if got := topicEnd(t, addr, "vigil-state", parts); got != stateA {
		t.Errorf("the refused group wrote to group vigil's state topic: end offsets %d, were %d", got, stateA)
	}

	// With a state topic of its own, it consumes everything.
	own := writeFile(t, dir, "other.yaml", base+"  state_topic: other-state\n")
	alertsB := consume("other", "--config", own)
	if len(alertsB) != len(alertsA) {
		t.Errorf("group other with its own state topic: %d alerts, group vigil %d", len(alertsB), len(alertsA))
	}
	for id := range alertsA {
		if !alertsB[id] {
			t.Errorf("alert %s of group vigil missing from group other's", id)
		}
	}
}

// alertIDs returns the alert ids of JSONL alerts.
func alertIDs(t *testing.T, out string) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for l := range strings.SplitSeq(out, "\n") {
		if l == "" {
			continue
		}
		var a struct {
			ID string `json:"alert_id"`
		}
		if err := json.Unmarshal([]byte(l), &a); err != nil || a.ID == "" {
			t.Fatalf("stdout line is not an alert: %v: %.200s", err, l)
		}
		ids[a.ID] = true
	}
	return ids
}

// topicEnd returns the end offsets of topic's partitions, summed.
func topicEnd(t *testing.T, addr, topic string, parts int) int64 {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}
	var lo []kafka.OffsetRequest
	for i := range parts {
		lo = append(lo, kafka.LastOffsetOf(i))
	}
	l, err := cl.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: lo}})
	if err != nil {
		t.Fatal(err)
	}
	var end int64
	for _, p := range l.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("%s partition %d: %v", topic, p.Partition, p.Error)
		}
		end += p.LastOffset
	}
	return end
}
