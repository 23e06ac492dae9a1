package detector

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/sim"
)

// These tests run the Repartitioner against kfake, with events produced
// without a key, round robin over the events topic's partitions, as a
// producer that does not key by agent_id would.

const rpInternal = "vigil-repartition"

// rpConfig is ktConfig with repartitioning on.
func rpConfig(addr string) RuntimeConfig {
	c := ktConfig(addr)
	c.Repartition = true
	return c
}

// rpUnkeyed returns the simulated stream of ktEvents without keys and with
// an application header on every message, plus invalid messages of every
// kind a producer may send (the simulator's own invalid lines among them).
func rpUnkeyed(t *testing.T) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	for i, m := range ktEvents(t) {
		out = append(out, kafka.Message{Value: m.Value, Headers: []kafka.Header{{Key: "app", Value: []byte(strconv.Itoa(i))}}})
	}
	for _, v := range []string{
		`{"event_id":"bad"`, // truncated JSON
		`{"event_id":"x1","ts":"2026-03-02T00:00:00Z","target_id":"t","action":"a","decision":"allow"}`,                     // no agent_id
		`{"event_id":"x2","ts":"2026-03-02T00:00:00Z","agent_id":"","target_id":"t","action":"a","decision":"allow"}`,       // empty agent_id
		`{"event_id":"x3","ts":"yesterday","agent_id":"spiffe://x/a","target_id":"t","action":"a","decision":"allow"}`,      // bad ts
		`{"event_id":"x4","ts":"2026-03-02T00:00:00Z","agent_id":"spiffe://x/a","target_id":"t","action":"a","decision":1}`, // bad type
		``, // empty
	} {
		out = append(out, kafka.Message{Key: []byte("producer-key"), Value: []byte(v)})
	}
	return out
}

// rpProduce writes msgs to the events topic round robin over its
// partitions, ignoring their keys.
func rpProduce(t *testing.T, addr string, msgs []kafka.Message) {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Topic: ktTopic, Transport: tr, Balancer: &kafka.RoundRobin{},
		BatchSize: 2000, BatchBytes: 900 << 10, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce: %.300v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// rpRead returns every message of a partition of topic, in order.
func rpRead(t *testing.T, addr, topic string, p int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := kafka.DialLeader(ctx, "tcp", addr, topic, p)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	last, err := conn.ReadLastOffset()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Seek(0, kafka.SeekAbsolute); err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for int64(len(out)) < last {
		b := conn.ReadBatch(1, 32<<20)
		for {
			m, err := b.ReadMessage()
			if err != nil {
				break
			}
			out = append(out, m)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("read %s partition %d: %v", topic, p, err)
		}
	}
	return out
}

func rpReadAll(t *testing.T, addr, topic string, n int) [][]kafka.Message {
	t.Helper()
	parts := make([][]kafka.Message, n)
	for p := range parts {
		parts[p] = rpRead(t, addr, topic, p)
	}
	return parts
}

// rpSource returns the source coordinates a forwarded message carries.
func rpSource(t *testing.T, m kafka.Message) (part int, off int64) {
	t.Helper()
	var topic string
	var err1, err2 error
	part, off = -1, -1
	for _, h := range m.Headers {
		switch h.Key {
		case HeaderSourceTopic:
			topic = string(h.Value)
		case HeaderSourcePartition:
			part, err1 = strconv.Atoi(string(h.Value))
		case HeaderSourceOffset:
			off, err2 = strconv.ParseInt(string(h.Value), 10, 64)
		}
	}
	if topic != ktTopic || part < 0 || off < 0 || err1 != nil || err2 != nil {
		t.Fatalf("forwarded message %d/%d lacks source headers: %+v", m.Partition, m.Offset, m.Headers)
	}
	return part, off
}

// rpRunning is a Repartitioner running in its own goroutine.
type rpRunning struct {
	rp     *Repartitioner
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func rpStart(t *testing.T, cfg RuntimeConfig) *rpRunning {
	t.Helper()
	reg := prometheus.NewRegistry()
	rp, err := NewRepartitioner(cfg, reg, ktLog(t, "rp"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &rpRunning{rp: rp, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- rp.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *rpRunning) metric(t *testing.T, name string) float64 {
	return (&ktRunning{reg: r.reg}).metric(t, name)
}

func (r *rpRunning) stop(t *testing.T) {
	t.Helper()
	awaitStop(t, "Repartitioner.Run", r.cancel, &r.done)
}

// Unkeyed events spread over three partitions are forwarded, every one of
// them once, to a four-partition internal topic: each agent's events in one
// partition (the CRC32 balancer's for its id), in their source partition's
// order, with value and headers kept and the source added; invalid ones
// keep their key. A Runtime on the internal topic processes them as one
// Pipeline per internal partition would, dead-lettering the invalid ones
// with the decoder's reason.
func TestRepartitionerKeysEveryAgentToOnePartition(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 3)
	cfg := rpConfig(addr)
	cfg.RepartitionPartitions = 4
	src := rpUnkeyed(t)
	rpProduce(t, addr, src)
	srcParts := rpReadAll(t, addr, ktTopic, 3)
	for p, msgs := range srcParts {
		if len(msgs) < len(src)/3 {
			t.Fatalf("source partition %d has %d of %d messages: not round robin", p, len(msgs), len(src))
		}
	}

	sink := newKtRecorder()
	start := time.Now()
	rp := rpStart(t, cfg)
	<-rp.rp.Prepared()
	rt := ktStart(t, "rt", cfg.RepartitionedConfig(), sink, nil)
	ktWait(t, 30*time.Second, "source offsets committed to the end", ktAllCommitted(t, addr, rp.rp.Group(), 3))
	t.Logf("%d messages repartitioned in %v", len(src), time.Since(start))
	if got := rp.metric(t, "vigil_repartition_messages_total"); got != float64(len(src)) {
		t.Errorf("vigil_repartition_messages_total = %v, want %d", got, len(src))
	}
	if got := rp.metric(t, "vigil_repartition_produce_failures_total"); got != 0 {
		t.Errorf("vigil_repartition_produce_failures_total = %v, want 0", got)
	}

	parts := rpReadAll(t, addr, rpInternal, 4)
	seen := make(map[[2]int64]bool)
	agentPart := make(map[string]int)
	var dec features.Decoder
	var ev features.Event
	invalid := make(map[[2]int64]features.Reason) // source partition, offset → reason
	source := make(map[[2]int64][2]int64)         // internal partition, offset → source
	for p, msgs := range parts {
		lastSrc := map[int]int64{}
		for _, m := range msgs {
			sp, so := rpSource(t, m)
			k := [2]int64{int64(sp), so}
			source[[2]int64{int64(p), m.Offset}] = k
			if seen[k] {
				t.Errorf("source %d/%d forwarded twice", sp, so)
			}
			seen[k] = true
			if prev, ok := lastSrc[sp]; ok && so <= prev {
				t.Errorf("internal partition %d: source %d/%d after offset %d: out of order", p, sp, so, prev)
			}
			lastSrc[sp] = so
			orig := srcParts[sp][so]
			if !bytes.Equal(m.Value, orig.Value) {
				t.Errorf("source %d/%d: value changed: %q, want %q", sp, so, m.Value, orig.Value)
			}
			if len(m.Headers) < len(orig.Headers) || !slices.EqualFunc(m.Headers[:len(orig.Headers)], orig.Headers, func(a, b kafka.Header) bool {
				return a.Key == b.Key && bytes.Equal(a.Value, b.Value)
			}) {
				t.Errorf("source %d/%d: headers %+v do not start with the original %+v", sp, so, m.Headers, orig.Headers)
			}
			if err := dec.Decode(m.Value, &ev); err != nil {
				invalid[k] = rejectReason(err)
				if !bytes.Equal(m.Key, orig.Key) {
					t.Errorf("invalid event %d/%d: key %q, want the original %q", sp, so, m.Key, orig.Key)
				}
				continue
			}
			id := string(ev.AgentID)
			if string(m.Key) != id {
				t.Errorf("source %d/%d: key %q, want agent_id %q", sp, so, m.Key, id)
			}
			if want := (kafka.CRC32Balancer{}).Balance(kafka.Message{Key: []byte(id)}, 0, 1, 2, 3); p != want {
				t.Errorf("agent %s in partition %d, want %d (CRC32)", id, p, want)
			}
			if q, ok := agentPart[id]; ok && q != p {
				t.Errorf("agent %s in partitions %d and %d", id, q, p)
			}
			agentPart[id] = p
		}
	}
	if len(seen) != len(src) {
		t.Errorf("%d source messages forwarded, want %d", len(seen), len(src))
	}
	if len(agentPart) < 4 || len(invalid) < 6 {
		t.Fatalf("%d agents and %d invalid messages: the test needs more", len(agentPart), len(invalid))
	}
	used := make(map[int]bool)
	for _, p := range agentPart {
		used[p] = true
	}
	t.Logf("%d agents over internal partitions %v; %d invalid messages", len(agentPart), slices.Sorted(maps.Keys(used)), len(invalid))

	// The Runtime on the internal topic: exactly one Pipeline per internal
	// partition over what it holds.
	ktWait(t, 30*time.Second, "the runtime to read every message", func() bool {
		return rt.metric(t, "vigil_consumer_messages_total") == float64(len(src))
	})
	wantIDs, internalDead, _ := ktReference(t, parts, false)
	// Dead letters name where the producer wrote the event (the source
	// headers), not the internal topic.
	wantDead := make(map[[2]int64]features.Reason, len(internalDead))
	for k, r := range internalDead {
		wantDead[source[k]] = r
	}
	ktWait(t, 10*time.Second, "every dead letter", func() bool { return len(sink.deadLetters()) == len(wantDead) })
	gotDead := sink.deadLetters()
	if !maps.Equal(gotDead, wantDead) {
		t.Errorf("dead letters: got %v\nwant %v", gotDead, wantDead)
	}
	for k, reason := range invalid {
		if gotDead[k] != reason {
			t.Errorf("invalid message %d/%d: dead-lettered as %q, want %q", k[0], k[1], gotDead[k], reason)
		}
	}
	ktWait(t, 10*time.Second, "the alerts", func() bool { return slices.Equal(sink.alertIDs(), wantIDs) })
	byReason := map[features.Reason]int{}
	for _, r := range gotDead {
		byReason[r]++
	}
	// For comparison: the alerts of the same events keyed by agent_id at
	// the source (what the event-time caveat costs here).
	keyedIDs, _, _ := ktReference(t, [][]kafka.Message{ktEvents(t)}, false)
	common := 0
	for _, id := range wantIDs {
		if _, ok := slices.BinarySearch(keyedIDs, id); ok {
			common++
		}
	}
	t.Logf("runtime: %d alerts (%d of the %d with keyed input), dead letters by reason %v", len(wantIDs), common, len(keyedIDs), byReason)
	rp.stop(t)
	rt.stop(t)
}

// While the brokers refuse produce requests to the internal topic, the
// source offsets do not advance past what was acknowledged; once they
// accept again, every message is forwarded and committed.
func TestRepartitionerProduceFailureHoldsCommits(t *testing.T) {
	ktLeakCheck(t)
	c, addr := ktClusterC(t, 3)
	var failing atomic.Bool
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		preq := req.(*kmsg.ProduceRequest)
		if !failing.Load() || !slices.ContainsFunc(preq.Topics, func(t kmsg.ProduceRequestTopic) bool { return t.Topic == rpInternal }) {
			return nil, nil, false
		}
		c.KeepControl()
		resp := preq.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range preq.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.NotEnoughReplicas.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	cfg := rpConfig(addr)
	events := rpUnkeyed(t)[:300]
	first, second := events[:120], events[120:]
	rpProduce(t, addr, first)
	rp := rpStart(t, cfg)
	group := rp.rp.Group()
	ktWait(t, 30*time.Second, "the first messages committed", ktAllCommitted(t, addr, group, 3))
	before := ktCommitted(t, addr, group, 3)

	failing.Store(true)
	rpProduce(t, addr, second)
	ktWait(t, 10*time.Second, "failed produce requests", func() bool {
		return rp.metric(t, "vigil_repartition_produce_failures_total") >= 3
	})
	time.Sleep(300 * time.Millisecond) // several commit intervals
	if got := ktCommitted(t, addr, group, 3); !slices.Equal(got, before) {
		t.Errorf("committed offsets moved while produce failed: %v, before %v", got, before)
	}
	var held int
	for _, msgs := range rpReadAll(t, addr, rpInternal, 3) {
		held += len(msgs)
	}
	if held != len(first) || rp.metric(t, "vigil_repartition_messages_total") != float64(len(first)) {
		t.Errorf("while failing: %d messages in the internal topic, want %d", held, len(first))
	}

	failing.Store(false)
	ktWait(t, 30*time.Second, "every message committed after recovery", ktAllCommitted(t, addr, group, 3))
	seen := make(map[[2]int64]bool)
	for _, msgs := range rpReadAll(t, addr, rpInternal, 3) {
		for _, m := range msgs {
			p, o := rpSource(t, m)
			seen[[2]int64{int64(p), o}] = true
		}
	}
	if len(seen) != len(events) {
		t.Errorf("%d distinct source messages forwarded, want %d", len(seen), len(events))
	}
	t.Logf("%v failed produce requests", rp.metric(t, "vigil_repartition_produce_failures_total"))
	rp.stop(t)
}

// A second member joins while the first forwards: the partitions are
// shared, and every message is forwarded and committed.
func TestRepartitionerRebalance(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 4)
	cfg := rpConfig(addr)
	events := rpUnkeyed(t)[:2000]
	a := rpStart(t, cfg)
	rpProduce(t, addr, events[:1000])
	ktWait(t, 30*time.Second, "the first half committed", ktAllCommitted(t, addr, a.rp.Group(), 4))
	b := rpStart(t, cfg)
	ktWait(t, 20*time.Second, "the rebalance", func() bool {
		pa, pb := a.rp.Assigned(), b.rp.Assigned()
		return len(pa) > 0 && len(pb) > 0 && len(pa)+len(pb) == 4
	})
	rpProduce(t, addr, events[1000:])
	ktWait(t, 30*time.Second, "everything committed", ktAllCommitted(t, addr, a.rp.Group(), 4))
	seen := make(map[[2]int64]int)
	for _, msgs := range rpReadAll(t, addr, rpInternal, 4) {
		for _, m := range msgs {
			p, o := rpSource(t, m)
			seen[[2]int64{int64(p), o}]++
		}
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	if len(seen) != len(events) {
		t.Errorf("%d distinct source messages forwarded, want %d", len(seen), len(events))
	}
	t.Logf("a holds %v, b holds %v; %d messages forwarded twice", a.rp.Assigned(), b.rp.Assigned(), dups)
	a.stop(t)
	b.stop(t)
}

// With commits due only hourly, stopping commits everything acknowledged.
func TestRepartitionerCommitsOnStop(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 3)
	cfg := rpConfig(addr)
	cfg.CheckpointInterval = time.Hour
	events := rpUnkeyed(t)[:90]
	rpProduce(t, addr, events)
	rp := rpStart(t, cfg)
	ktWait(t, 30*time.Second, "every message forwarded", func() bool {
		return rp.metric(t, "vigil_repartition_messages_total") == float64(len(events))
	})
	if got := ktCommitted(t, addr, rp.rp.Group(), 3); !slices.Equal(got, []int64{-1, -1, -1}) {
		t.Errorf("committed %v before the hour is up", got)
	}
	rp.stop(t)
	if !ktAllCommitted(t, addr, rp.rp.Group(), 3)() {
		t.Errorf("after stop: committed %v, want the ends %v", ktCommitted(t, addr, rp.rp.Group(), 3), ktEnds(t, addr, 3))
	}
}

// An existing internal topic is used as it is; Run waits for the events
// topic.
func TestRepartitionerWaitsForEventsTopic(t *testing.T) {
	ktLeakCheck(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, rpInternal))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr := c.ListenAddrs()[0]
	cfg := rpConfig(addr)
	rp := rpStart(t, cfg)
	time.Sleep(300 * time.Millisecond)
	if rp.rp.Ready() {
		t.Fatal("ready without an events topic")
	}
	if err := c.CreateTopic(ktTopic, 3, nil); err != nil {
		t.Fatal(err)
	}
	rpProduce(t, addr, rpUnkeyed(t)[:30])
	ktWait(t, 30*time.Second, "every message committed", ktAllCommitted(t, addr, rp.rp.Group(), 3))
	if got := rp.metric(t, "vigil_repartition_topic_partitions"); got != 2 {
		t.Errorf("internal topic has %v partitions, want the existing 2", got)
	}
	var n int
	for _, msgs := range rpReadAll(t, addr, rpInternal, 2) {
		n += len(msgs)
	}
	if n != 30 {
		t.Errorf("%d messages in the internal topic, want 30", n)
	}
	rp.stop(t)
}

func TestRepartitionConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*RuntimeConfig)
		field string
	}{
		{"default", func(*RuntimeConfig) {}, ""},
		{"on", func(c *RuntimeConfig) { c.Repartition = true }, ""},
		{"bad topic", func(c *RuntimeConfig) { c.RepartitionTopic = "a b" }, "kafka.repartition_topic"},
		{"empty topic", func(c *RuntimeConfig) { c.RepartitionTopic = "" }, "kafka.repartition_topic"},
		{"events topic", func(c *RuntimeConfig) { c.Repartition, c.RepartitionTopic = true, c.Topic }, "kafka.repartition_topic"},
		{"state topic", func(c *RuntimeConfig) { c.Repartition, c.RepartitionTopic = true, c.StateTopic }, "kafka.repartition_topic"},
		{"events topic when off", func(c *RuntimeConfig) { c.RepartitionTopic = c.Topic }, ""},
		{"partitions", func(c *RuntimeConfig) { c.RepartitionPartitions = -1 }, "kafka.repartition_partitions"},
		{"replication", func(c *RuntimeConfig) { c.RepartitionReplicationFactor = 40000 }, "kafka.repartition_replication_factor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultRuntimeConfig()
			tc.edit(&c)
			err := c.Validate()
			var ce *ConfigError
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field):
				t.Errorf("error %v, want one naming %s", err, tc.field)
			}
			if err == nil && c.Repartition {
				if err := c.RepartitionedConfig().Validate(); err != nil {
					t.Errorf("the detector's configuration is invalid: %v", err)
				}
			}
		})
	}
	c := DefaultRuntimeConfig()
	c.RepartitionTopic = c.Topic
	if _, err := NewRepartitioner(c, nil, nil); err == nil {
		t.Error("NewRepartitioner accepted the events topic as the internal topic")
	}
	rc := DefaultRuntimeConfig().RepartitionedConfig()
	if rc.Topic != "vigil-repartition" || rc.Repartition {
		t.Errorf("RepartitionedConfig: topic %q, repartition %v", rc.Topic, rc.Repartition)
	}
}

// BenchmarkRepartitionerKafka measures forwarding through a Kafka-protocol
// broker: kfake in this process (so it shares the CPUs), a simulated fleet
// of 80 agents over 2 days produced without keys, round robin over 6
// partitions, re-keyed into a 6-partition internal topic. Each iteration is
// a fresh group and internal topic; the figure is messages per second from
// Run's start until the brokers have acknowledged every message.
//
//	go test -run '^$' -bench RepartitionerKafka -benchtime 3x ./detector
func BenchmarkRepartitionerKafka(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, ktTopic))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	var buf, truth bytes.Buffer
	if _, err := sim.Generate(sim.Config{Seed: 1, Agents: 80, Days: 2, WarmupDays: 1, Incidents: 4}, &buf, &truth); err != nil {
		b.Fatal(err)
	}
	var msgs []kafka.Message
	for _, l := range bytes.Split(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), []byte("\n")) {
		msgs = append(msgs, kafka.Message{Value: l})
	}
	tr := &kafka.Transport{}
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Topic: ktTopic, Transport: tr, Balancer: &kafka.RoundRobin{},
		BatchSize: 2000, BatchBytes: 900 << 10, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll,
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		b.Fatalf("produce: %.300v", err)
	}
	w.Close()
	tr.CloseIdleConnections()
	b.ReportAllocs()
	b.ResetTimer()
	var elapsed time.Duration
	for i := range b.N {
		cfg := DefaultRuntimeConfig()
		cfg.Brokers, cfg.Topic, cfg.Group = []string{addr}, ktTopic, fmt.Sprintf("bench-%d", i)
		cfg.Repartition, cfg.RepartitionTopic = true, fmt.Sprintf("bench-repartition-%d", i)
		reg := prometheus.NewRegistry()
		rp, err := NewRepartitioner(cfg, reg, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- rp.Run(ctx) }()
		r := &ktRunning{reg: reg}
		for r.metric(b, "vigil_repartition_messages_total") < float64(len(msgs)) {
			time.Sleep(2 * time.Millisecond)
		}
		elapsed += time.Since(start)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(msgs))*float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(len(msgs)), "msgs/op")
}

// A forwarded message is bounded whatever its producer made of it: a value
// over the event size limit is cut to one byte more (still rejected for
// its size), an invalid message's long key is cut, the producer's headers
// are kept up to forwardMaxHeaders and never under the Repartitioner's own
// names; the cut value's and key's size and digest travel in headers, and
// the Runtime's dead letter (NewDeadLetter, sourceOf) has the producer's.
// A valid event is forwarded whole, keyed by its agent_id.
func TestForwardedMessageIsBounded(t *testing.T) {
	key, value := bytes.Repeat([]byte("K"), 4096), bytes.Repeat([]byte("v"), 1<<20-5000)
	spoof := []kafka.Header{
		{Key: HeaderSourceOffset, Value: []byte("0")},
		{Key: HeaderSourceValueSize, Value: []byte("1")},
		{Key: HeaderSourceValueSHA256, Value: bytes.Repeat([]byte("0"), 64)},
		{Key: "big", Value: make([]byte, forwardMaxHeaders-len("big")-len("trace")-len("abc"))}, // with trace: the bound
		{Key: "trace", Value: []byte("abc")},
		{Key: "one-too-many", Value: nil},
	}
	valid := []byte(`{"event_id":"e1","ts":"2026-03-02T10:00:00Z","agent_id":"spiffe://bank.example/agent/a","target_id":"t","action":"x","decision":"allow"}`)
	for _, tc := range []struct {
		name       string
		m          kafka.Message
		valid      bool
		wantKey    []byte
		wantValue  []byte
		wantCut    bool
		wantHeader []string // the producer's headers kept
	}{
		{name: "poison", m: kafka.Message{Key: key, Value: value, Headers: spoof},
			wantKey: key[:forwardMaxKey], wantValue: value[:forwardMaxValue], wantCut: true, wantHeader: []string{"big", "trace"}},
		{name: "invalid, small", m: kafka.Message{Key: []byte("k"), Value: []byte("{"), Headers: spoof[4:]},
			wantKey: []byte("k"), wantValue: []byte("{"), wantHeader: []string{"trace", "one-too-many"}},
		{name: "valid", m: kafka.Message{Key: key, Value: valid, Headers: spoof[3:]}, valid: true,
			wantKey: []byte("spiffe://bank.example/agent/a"), wantValue: valid, wantCut: true, wantHeader: []string{"big", "trace"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.m.Topic, tc.m.Partition, tc.m.Offset = "agent-events", 2, 77
			f := &forwarder{topic: []byte("agent-events")}
			p := &rpart{part: []byte("2"), has: true, head: ritem{m: tc.m}}
			p.valid = p.dec.Decode(tc.m.Value, &p.ev) == nil
			if p.valid != tc.valid {
				t.Fatalf("valid %v", p.valid)
			}
			f.add(p)
			if len(f.out) != 1 {
				t.Fatalf("%d messages out", len(f.out))
			}
			m := f.out[0]
			if !bytes.Equal(m.Key, tc.wantKey) || !bytes.Equal(m.Value, tc.wantValue) {
				t.Errorf("forwarded key %d, value %d bytes; want %d, %d", len(m.Key), len(m.Value), len(tc.wantKey), len(tc.wantValue))
			}
			size := len(m.Key) + len(m.Value)
			var own []string
			for _, h := range m.Headers {
				size += len(h.Key) + len(h.Value)
				if !sourceHeader(h.Key) {
					own = append(own, h.Key)
				}
			}
			if !slices.Equal(own, tc.wantHeader) {
				t.Errorf("producer headers kept %v, want %v", own, tc.wantHeader)
			}
			if size > 150<<10 {
				t.Errorf("forwarded message of %d bytes", size)
			}
			if (f.ncut > 0) != tc.wantCut {
				t.Errorf("counted cut: %d", f.ncut)
			}
			// The Runtime rejects it and dead-letters the producer's message.
			d := NewDeadLetter(rpInternal, 0, 5, m.Key, m.Value, time.Time{}, features.ReasonTooLarge, "")
			sourceOf(&d, m.Headers)
			if d.Topic != "agent-events" || d.Partition != 2 || d.Offset != 77 {
				t.Errorf("dead letter points at %s/%d/%d", d.Topic, d.Partition, d.Offset)
			}
			if d.ValueSize != len(tc.m.Value) || d.ValueSHA256 != sha256.Sum256(tc.m.Value) {
				t.Errorf("dead letter value size %d, digest %x; want the producer's (%d)", d.ValueSize, d.ValueSHA256, len(tc.m.Value))
			}
			if tc.valid {
				return
			}
			wantKeyCut := len(tc.m.Key) > MaxDeadLetterKey
			if d.KeyCut != wantKeyCut || wantKeyCut && (d.KeySize != len(tc.m.Key) || d.KeySHA256 != sha256.Sum256(tc.m.Key)) {
				t.Errorf("dead letter key cut %v, size %d; want %v, the producer's %d", d.KeyCut, d.KeySize, wantKeyCut, len(tc.m.Key))
			}
		})
	}
}
