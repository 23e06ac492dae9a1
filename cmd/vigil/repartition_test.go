package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"
)

// vigil run --kafka.repartition against vigil devbroker, with events
// produced without keys round robin over three partitions: every message
// goes through the repartition topic, the invalid ones come out as dead
// letters, and on SIGTERM it exits 0 with both groups committed to the end.
func TestRunRepartitionsUnkeyedEvents(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	addr := startDevbroker(t, "--topic", "agent-events:3")
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	var msgs []kafka.Message
	for i := range 40 {
		msgs = append(msgs, kafka.Message{Value: []byte(fmt.Sprintf(
			`{"event_id":"e%d","ts":"2026-03-02T10:%02d:00Z","agent_id":"spiffe://bank.example/agent/a%d","target_id":"svc","action":"get","decision":"allow"}`, i, i, i%4))})
	}
	msgs = append(msgs, kafka.Message{Value: []byte(`{"event_id":"bad"`)},
		kafka.Message{Key: []byte("y"), Value: []byte(`{"event_id":"e99","ts":"yesterday","agent_id":"a","target_id":"t","action":"x","decision":"allow"}`)})
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "agent-events", Transport: tr, Balancer: &kafka.RoundRobin{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	w.Close()

	var stdout, stderr syncBuffer
	web, rc := startRun(t, addr, "cmd-rp", &stdout, &stderr, "--kafka.repartition")
	get := webGet(web)
	waitFor(t, 20*time.Second, "/-/ready", func() bool { code, _ := get("/-/ready"); return code == 200 })
	waitFor(t, 20*time.Second, "two dead letters on stderr", func() bool { return strings.Count(stderr.String(), "dead-letter ") == 2 })
	for _, want := range []string{"reason=bad_json", "reason=bad_timestamp"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %s:\n%s", want, stderr.String())
		}
	}
	waitFor(t, 10*time.Second, "42 messages through both stages in /metrics", func() bool {
		_, body := get("/metrics")
		return metricSum(body, "vigil_repartition_messages_total") == 42 && metricSum(body, "vigil_consumer_messages_total") == 42
	})
	_, body := get("/metrics")
	if got := metricSum(body, `vigil_repartition_messages_total{key="agent_id"}`); got != 40 {
		t.Errorf("%v messages keyed by agent_id, want 40", got)
	}
	promtoolCheckMetrics(t, body)

	sigterm(t, rc, &stderr)
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr}
	for _, g := range []struct{ group, topic string }{{"cmd-rp-repartition", "agent-events"}, {"cmd-rp", "vigil-repartition"}} {
		resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: g.group, Topics: map[string][]int{g.topic: {0, 1, 2}}})
		if err != nil {
			t.Fatal(err)
		}
		var committed int64
		for _, p := range resp.Topics[g.topic] {
			committed += max(p.CommittedOffset, 0)
		}
		if committed != 42 {
			t.Errorf("group %s: committed offsets of %s sum to %d, want 42: %+v", g.group, g.topic, committed, resp.Topics)
		}
	}
}
