package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
	kafkasink "github.com/vigil-sec/vigil/sinks/kafka"
)

// devbrokerMaxMessage is the dev broker's max.message.bytes, as a user
// gets it: kfake's default (Kafka's message.max.bytes default, 1 MiB + 12).
const devbrokerMaxMessage = 1048588

// Poison pill: a message as large as the broker takes (its key 4 KiB, its
// value just under 1 MiB), between ordinary events of the same partition.
// The decoder rejects it (too_large) and it becomes a dead letter; a dead
// letter holding the whole message no longer fit the dead-letter topic, the
// refusal was permanent, and `vigil run` exited without committing, so
// every restart (and every member that took the partition over) read the
// same message and exited too. Now the dead letter is bounded: vigil keeps
// running, the dead letter on agent-events-dlq holds 16 KiB of the value and
// 1 KiB of the key with the whole value's size and SHA-256 in its headers,
// the events behind the poison are scored (alerts from incidents after
// it), and the group's committed offset moves past it to the end.
//
// With --kafka.repartition the poison passes the Repartitioner first, which
// forwarded it whole with its source headers added: too large for the
// repartition topic, and the Repartitioner stopped vigil the same way.
func TestPoisonPillOversizedEvent(t *testing.T) {
	t.Run("direct", func(t *testing.T) { testPoisonPill(t, false) })
	t.Run("repartition", func(t *testing.T) { testPoisonPill(t, true) })
}

func testPoisonPill(t *testing.T, repartition bool) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	addr := startDevbroker(t, "--topic", "agent-events:1")

	// Ordinary traffic with incidents on day 3; the poison at the start of
	// day 3, so every alert of an incident comes from events behind it.
	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Seed = 12, 3, 2, 3, 5
	msgs := simMessages(t, cfg)
	poisonAt := cfg.Start.AddDate(0, 0, cfg.WarmupDays)
	cut := 0
	for i, m := range msgs {
		var e struct {
			TS time.Time `json:"ts"`
		}
		if json.Unmarshal(m.Value, &e) == nil && !e.TS.Before(poisonAt) {
			cut = i
			break
		}
	}
	if cut == 0 {
		t.Fatal("no event on the last day")
	}
	// A JSON object, so it is the size, not the syntax, that rejects it;
	// the key and value fill the broker's limit but for the record
	// batch's overhead (61 bytes of header, a few of record).
	// Its headers pose as the Repartitioner's, to point its dead letter
	// elsewhere.
	key := bytes.Repeat([]byte("K"), 4096)
	hdrs := []kafka.Header{{Key: detector.HeaderSourceOffset, Value: []byte("0")}, {Key: detector.HeaderSourceValueSize, Value: []byte("1")}}
	room := devbrokerMaxMessage - len(key) - 80
	for _, h := range hdrs {
		room -= len(h.Key) + len(h.Value) + 2
	}
	value := []byte(`{"event_id":"poison","ts":"` + poisonAt.Format(time.RFC3339) + `","agent_id":"spiffe://bank.example/agent/poison","target_id":"t","action":"a","decision":"allow","pad":"`)
	value = append(value, bytes.Repeat([]byte("x"), room-len(value)-2)...)
	value = append(value, `"}`...)
	poison := kafka.Message{Key: key, Value: value, Headers: hdrs}
	produceAll(t, addr, msgs[:cut])
	produceAll(t, addr, []kafka.Message{poison})
	produceAll(t, addr, msgs[cut:])
	poisonOffset := int64(cut)
	total := int64(len(msgs) + 1)
	t.Logf("produced %d events, the %d-byte poison (key %d, value %d bytes) at offset %d",
		len(msgs), len(key)+len(value), len(key), len(value), poisonOffset)

	conf := writeFile(t, t.TempDir(), "vigil.yaml", `
kafka:
  checkpoint_interval: 300ms
  flush_interval: 200ms
  retry_backoff: 100ms
  max_retry_backoff: 1s
  idle_timeout: 10m
`)
	var stdout, stderr syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vigil run stderr (tail):\n%s", tail(stderr.String(), 3000))
		}
	})
	args := []string{"--config", conf}
	// The group that consumes agent-events: the Repartitioner's, or the
	// detector's.
	group := "poison"
	if repartition {
		args = append(args, "--kafka.repartition")
		group += detector.RepartitionGroupSuffix
	}
	web, rc := startRun(t, addr, "poison", &stdout, &stderr, args...)

	// It consumes everything and commits past the poison, and keeps
	// running.
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case code := <-rc:
			t.Fatalf("vigil run exited %d on the poison message", code)
		case <-time.After(100 * time.Millisecond):
		}
		if c, e := groupProgress(t, addr, group, 1); c == e && e == total && metricSum(scrape(t, web), "vigil_consumer_messages_total") == float64(total) {
			break
		}
		if time.Now().After(deadline) {
			c, e := groupProgress(t, addr, group, 1)
			t.Fatalf("committed %d of %d after 60s (the poison is at offset %d)", c, e, poisonOffset)
		}
	}
	select {
	case code := <-rc:
		t.Fatalf("vigil run exited %d", code)
	case <-time.After(time.Second):
	}
	metrics := scrape(t, web)
	if n := metricSum(metrics, "vigil_consumer_messages_total"); n != float64(total) {
		t.Errorf("consumed %v messages, want %d", n, total)
	}
	if n := metricSum(metrics, `vigil_consumer_dead_letters_total{reason="too_large"}`); n != 1 {
		t.Errorf("%v too_large dead letters counted, want 1", n)
	}

	// The events behind the poison were scored: alerts of the incidents,
	// all from windows after it.
	var after int
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var a struct {
			AlertID     string    `json:"alert_id"`
			WindowStart time.Time `json:"window_start"`
		}
		if json.Unmarshal([]byte(l), &a) == nil && a.AlertID != "" && !a.WindowStart.Before(poisonAt) {
			after++
		}
	}
	if after == 0 {
		t.Errorf("no alert from windows after the poison:\n%.2000s", stdout.String())
	}
	if n := metricSum(metrics, "vigil_detector_windows_closed_total"); n == 0 {
		t.Error("no windows closed")
	}

	// The dead letter: bounded, with the original's size and digest.
	dl := readDeadLetter(t, addr, poisonOffset)
	hdr := map[string]string{}
	for _, h := range dl.Headers {
		hdr[h.Key] = string(h.Value)
	}
	vsum, ksum := sha256.Sum256(value), sha256.Sum256(key)
	for k, want := range map[string]string{
		kafkasink.HeaderReason: "too_large", kafkasink.HeaderSourceTopic: "agent-events",
		kafkasink.HeaderSourcePartition: "0", kafkasink.HeaderSourceOffset: strconv.FormatInt(poisonOffset, 10),
		kafkasink.HeaderTruncated:   "true",
		kafkasink.HeaderValueSize:   strconv.Itoa(len(value)),
		kafkasink.HeaderValueSHA256: hex.EncodeToString(vsum[:]),
		kafkasink.HeaderKeySize:     strconv.Itoa(len(key)),
		kafkasink.HeaderKeySHA256:   hex.EncodeToString(ksum[:]),
	} {
		if hdr[k] != want {
			t.Errorf("dead letter header %s = %.80q, want %.80q", k, hdr[k], want)
		}
	}
	if !bytes.Equal(dl.Value, value[:detector.MaxDeadLetterValue]) || !bytes.Equal(dl.Key, key[:detector.MaxDeadLetterKey]) {
		t.Errorf("dead letter key %d, value %d bytes; want the first %d and %d of the message's", len(dl.Key), len(dl.Value),
			detector.MaxDeadLetterKey, detector.MaxDeadLetterValue)
	}
	size := len(dl.Key) + len(dl.Value)
	for _, h := range dl.Headers {
		size += len(h.Key) + len(h.Value)
	}
	if size > kafkasink.MinDeadLetterBytes {
		t.Errorf("dead letter of %d bytes: more than %d", size, kafkasink.MinDeadLetterBytes)
	}
	if !strings.Contains(stderr.String(), "reason=too_large") || !strings.Contains(stderr.String(), "truncated=true") {
		t.Error("stderr lacks the truncated dead letter")
	}
	t.Logf("dead letter: %d bytes (key %d, value %d) for a %d-byte message; %d alerts after the poison",
		size, len(dl.Key), len(dl.Value), len(key)+len(value), after)
	sigterm(t, rc, &stderr)
}

// produceAll writes msgs to the events topic in order, with a writer that
// takes messages as large as the dev broker does.
func produceAll(t *testing.T, addr string, msgs []kafka.Message) {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "agent-events", Transport: tr, RequiredAcks: kafka.RequireAll,
		BatchSize: 1000, BatchBytes: devbrokerMaxMessage, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// readDeadLetter reads agent-events-dlq until the dead letter of the
// message at offset of agent-events.
func readDeadLetter(t *testing.T, addr string, offset int64) kafka.Message {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: "agent-events-dlq", Partition: 0, MaxBytes: 2 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := fmt.Sprint(offset)
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("no dead letter of offset %d on agent-events-dlq: %v", offset, err)
		}
		for _, h := range m.Headers {
			if h.Key == kafkasink.HeaderSourceOffset && string(h.Value) == want {
				return m
			}
		}
	}
}
