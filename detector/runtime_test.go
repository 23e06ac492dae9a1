package detector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/sim"
)

// These tests run the Runtime against kfake, an in-process Kafka-protocol
// cluster on a loopback port: consumer groups, rebalances, commits and
// fetches are the real protocol.

const ktTopic = "agent-events"

// ktCluster starts a one-broker kfake cluster with topic ktTopic in nparts
// partitions and returns its address. It is closed when the test ends.
func ktCluster(t *testing.T, nparts int32, opts ...kfake.Opt) string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(nparts, ktTopic)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// ktLeakCheck must be the test's first Cleanup so that it runs last.
func ktLeakCheck(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// ktConfig is a RuntimeConfig with fast test timing.
func ktConfig(addr string) RuntimeConfig {
	c := DefaultRuntimeConfig()
	c.Brokers = []string{addr}
	c.Topic = ktTopic
	c.Group = "vigil-test"
	c.HeartbeatInterval = 100 * time.Millisecond
	c.SessionTimeout = 6 * time.Second // kfake's minimum
	c.RebalanceTimeout = 5 * time.Second
	c.ShutdownTimeout = 2 * time.Second
	c.JoinBackoff = 100 * time.Millisecond
	c.CheckpointInterval = 50 * time.Millisecond
	c.RetryBackoff = 5 * time.Millisecond
	c.MaxRetryBackoff = 40 * time.Millisecond
	c.IdleTimeout = 10 * time.Minute // only the skewed clock makes a partition idle
	c.DialTimeout = 2 * time.Second
	return c
}

// ktLog sends a runtime's log to the test log (shown on failure or -v).
func ktLog(t *testing.T, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(ktWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("rt", name)
}

type ktWriter struct{ t *testing.T }

func (w ktWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// ktRecorder is a Sink that records what it is given and fails while failing
// is set.
type ktRecorder struct {
	failing  atomic.Bool
	failures atomic.Int64
	mu       sync.Mutex
	alerts   map[string]int               // alert_id → times written
	dead     map[[2]int64]features.Reason // partition, offset → reason
	batches  int
}

func newKtRecorder() *ktRecorder {
	return &ktRecorder{alerts: make(map[string]int), dead: make(map[[2]int64]features.Reason)}
}

func (s *ktRecorder) Name() string { return "recorder" }

func (s *ktRecorder) Write(ctx context.Context, b Batch) error {
	if s.failing.Load() {
		s.failures.Add(1)
		return errors.New("recorder: unavailable")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	for _, a := range b.Alerts {
		s.alerts[a.AlertID]++
	}
	for _, d := range b.DeadLetters {
		// (A dead letter read from the repartition topic names the event's
		// source topic and partition instead.)
		if d.Topic == b.Topic && d.Partition != b.Partition {
			return fmt.Errorf("dead letter of partition %d in batch of %d: %w", d.Partition, b.Partition, ErrPermanent)
		}
		s.dead[[2]int64{int64(d.Partition), d.Offset}] = d.Reason
	}
	return nil
}

func (s *ktRecorder) alertIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.alerts))
}

func (s *ktRecorder) deadLetters() map[[2]int64]features.Reason {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.dead)
}

// ktEvents returns a small simulated fleet's events (with the simulator's
// out-of-order, duplicate and invalid lines) as messages for a 4-partition
// topic, keyed by agent_id. Agents are spread over the partitions in order
// of first appearance, so that every partition has several.
func ktEvents(t *testing.T) []kafka.Message {
	t.Helper()
	ktSim.once.Do(func() {
		var buf, truth bytes.Buffer
		if _, ktSim.err = sim.Generate(sim.Config{Seed: 1, Agents: 6, Days: 2, WarmupDays: 1, Incidents: 3}, &buf, &truth); ktSim.err != nil {
			return
		}
		part := make(map[string]int)
		for _, l := range bytes.Split(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), []byte("\n")) {
			key := l // lines without an agent_id are keyed by their text
			if _, after, ok := bytes.Cut(l, []byte(`"agent_id":"`)); ok {
				if id, _, ok := bytes.Cut(after, []byte(`"`)); ok {
					key = id
				}
			}
			p, ok := part[string(key)]
			if !ok {
				p = len(part) % 4
				part[string(key)] = p
			}
			ktSim.msgs = append(ktSim.msgs, kafka.Message{Key: key, Value: l,
				Headers: []kafka.Header{{Key: ktPartitionHeader, Value: []byte(strconv.Itoa(p))}}})
		}
	})
	if ktSim.err != nil {
		t.Fatal(ktSim.err)
	}
	return slices.Clone(ktSim.msgs)
}

// ktSim caches the simulated stream for the tests that share it.
var ktSim struct {
	once sync.Once
	msgs []kafka.Message
	err  error
}

// ktPartitionHeader, when present on a message, picks its partition.
const ktPartitionHeader = "test-partition"

func ktWrite(t *testing.T, addr string, tr *kafka.Transport, msgs []kafka.Message) {
	t.Helper()
	if tr == nil {
		tr = &kafka.Transport{}
	}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Topic: ktTopic, Transport: tr,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, parts ...int) int {
			for _, h := range m.Headers {
				if h.Key == ktPartitionHeader {
					p, _ := strconv.Atoi(string(h.Value))
					return p
				}
			}
			h := fnv.New32a()
			h.Write(m.Key)
			return parts[int(h.Sum32())%len(parts)]
		}),
		BatchSize: 2000, BatchBytes: 900 << 10, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce: %.300v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// ktRead returns every message of a partition of the events topic, in order.
func ktRead(t *testing.T, addr string, p int) []kafka.Message {
	t.Helper()
	return rpRead(t, addr, ktTopic, p)
}

// ktEnds returns each partition's end offset.
func ktEnds(t *testing.T, addr string, n int) []int64 {
	t.Helper()
	ends := make([]int64, n)
	for p := range ends {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := kafka.DialLeader(ctx, "tcp", addr, ktTopic, p)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if ends[p], err = conn.ReadLastOffset(); err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	return ends
}

// ktCommitted returns the group's committed offset of each partition (-1:
// none).
func ktCommitted(t *testing.T, addr, group string, n int) []int64 {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 10 * time.Second}
	parts := make([]int, n)
	for i := range parts {
		parts[i] = i
	}
	resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{ktTopic: parts}})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = -1
	}
	for _, p := range resp.Topics[ktTopic] {
		if p.Error == nil {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out
}

// ktReference runs one Pipeline per partition over that partition's
// messages in order: the alert ids and dead letters the runtime must
// produce, and the windows the pipelines closed. With flush, open windows
// are closed at the end, as an idle partition eventually does.
func ktReference(t *testing.T, parts [][]kafka.Message, flush bool) (ids []string, dead map[[2]int64]features.Reason, windows int64) {
	t.Helper()
	dead = make(map[[2]int64]features.Reason)
	set := make(map[string]bool)
	for p, msgs := range parts {
		pl, err := NewPipeline(DefaultConfig(), func(a *Alert) { set[a.AlertID] = true })
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := pl.Process(m.Value); err != nil {
				dead[[2]int64{int64(p), m.Offset}] = rejectReason(err)
			}
		}
		if flush {
			pl.Flush()
		}
		windows += pl.Stats().Windows
	}
	return slices.Sorted(maps.Keys(set)), dead, windows
}

// ktWait polls cond until it holds or the deadline passes.
func ktWait(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ktRunning is a Runtime running in its own goroutine.
type ktRunning struct {
	rt     *Runtime
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func ktStart(t *testing.T, name string, cfg RuntimeConfig, sink Sink, skew *atomic.Int64) *ktRunning {
	t.Helper()
	reg := prometheus.NewRegistry()
	rt, err := NewRuntime(cfg, ktDetConfig(), sink, reg, ktLog(t, name))
	if err != nil {
		t.Fatal(err)
	}
	if skew != nil {
		rt.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &ktRunning{rt: rt, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- rt.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// metric returns the sum of a metric's series.
func (r *ktRunning) metric(t testing.TB, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// stop cancels the runtime and checks that it returns nil promptly.
func (r *ktRunning) stop(t *testing.T) {
	t.Helper()
	awaitStop(t, "Run", r.cancel, &r.done)
}

// awaitStop cancels a Run started in a goroutine (its result on *done) and
// checks that it returns nil within 20 s; a nil *done means already stopped.
func awaitStop(t *testing.T, what string, cancel func(), done *chan error) {
	t.Helper()
	if *done == nil {
		return
	}
	cancel()
	select {
	case err := <-*done:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not return within 20s of cancel", what)
	}
	*done = nil
}

func ktAllCommitted(t *testing.T, addr, group string, n int) func() bool {
	ends := ktEnds(t, addr, n)
	return func() bool {
		for p, c := range ktCommitted(t, addr, group, n) {
			if c != ends[p] && !(c < 0 && ends[p] == 0) {
				return false
			}
		}
		return true
	}
}

// Two runtimes in one group share the partitions; every partition is read,
// the alerts and dead letters are exactly those of one Pipeline per
// partition, offsets are committed to the end, and an idle partition's
// windows close by the wall clock.
func TestRuntimeGroupConsumesEveryPartition(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 4)
	cfg := ktConfig(addr)
	sink := newKtRecorder()
	var skew atomic.Int64
	a := ktStart(t, "a", cfg, sink, &skew)
	b := ktStart(t, "b", cfg, sink, &skew)
	ktWait(t, 20*time.Second, "both members to hold partitions", func() bool {
		pa, pb := a.rt.Assigned(), b.rt.Assigned()
		return len(pa) > 0 && len(pb) > 0 && len(pa)+len(pb) == 4 && a.rt.Ready() && b.rt.Ready()
	})
	t.Logf("assignment: a=%v b=%v", a.rt.Assigned(), b.rt.Assigned())

	ktWrite(t, addr, nil, ktEvents(t))
	parts := make([][]kafka.Message, 4)
	for p := range parts {
		parts[p] = ktRead(t, addr, p)
		if len(parts[p]) == 0 {
			t.Fatalf("partition %d is empty: the test needs every partition used", p)
		}
	}
	wantIDs, wantDead, _ := ktReference(t, parts, false)
	if len(wantIDs) == 0 || len(wantDead) == 0 {
		t.Fatalf("reference has %d alerts and %d dead letters; the test needs both", len(wantIDs), len(wantDead))
	}
	ktWait(t, 30*time.Second, "offsets committed to the end", ktAllCommitted(t, addr, cfg.Group, 4))
	if got := sink.alertIDs(); !slices.Equal(got, wantIDs) {
		t.Errorf("alerts: got %d %v\nwant %d %v", len(got), got, len(wantIDs), wantIDs)
	}
	if got := sink.deadLetters(); !maps.Equal(got, wantDead) {
		t.Errorf("dead letters: got %v\nwant %v", got, wantDead)
	}

	// Nothing arrives any more: an hour of wall clock later every open
	// window has closed, as if the stream had been flushed.
	flushedIDs, _, flushedWindows := ktReference(t, parts, true)
	t.Logf("%d alerts and %d dead letters while streaming; %d alerts and %d windows once idle windows close", len(wantIDs), len(wantDead), len(flushedIDs), flushedWindows)
	skew.Store(int64(time.Hour))
	windows := func() int64 {
		return int64(a.metric(t, "vigil_detector_windows_closed_total") + b.metric(t, "vigil_detector_windows_closed_total"))
	}
	ktWait(t, 10*time.Second, "idle partitions to close their windows", func() bool { return windows() == flushedWindows })
	ktWait(t, 5*time.Second, "alerts of the closed windows", func() bool { return slices.Equal(sink.alertIDs(), flushedIDs) })

	a.stop(t)
	b.stop(t)
	if a.rt.Ready() || len(a.rt.Assigned()) != 0 {
		t.Errorf("after Run: ready %v, assigned %v", a.rt.Ready(), a.rt.Assigned())
	}
}

// A member joins while the group is consuming: partitions move, every
// message is processed once (every dead letter arrives) and committed, the
// partitions that stay keep their Pipeline, and those that move take their
// state along (checkpointed on revocation, restored by the new owner): the
// alerts are exactly one Pipeline's per partition over the whole stream.
func TestRuntimeRebalanceLosesNothing(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 4)
	cfg := ktConfig(addr)
	sink := newKtRecorder()
	events := ktEvents(t)
	half := len(events) / 2

	a := ktStart(t, "a", cfg, sink, nil)
	ktWait(t, 20*time.Second, "a to hold every partition", func() bool { return len(a.rt.Assigned()) == 4 })
	ktWrite(t, addr, nil, events[:half])
	ktWait(t, 30*time.Second, "first half committed", ktAllCommitted(t, addr, cfg.Group, 4))

	b := ktStart(t, "b", cfg, sink, nil)
	ktWait(t, 20*time.Second, "the rebalance", func() bool {
		pa, pb := a.rt.Assigned(), b.rt.Assigned()
		return len(pa) > 0 && len(pb) > 0 && len(pa)+len(pb) == 4
	})
	kept := a.rt.Assigned()
	ktWrite(t, addr, nil, events[half:])
	ktWait(t, 30*time.Second, "everything committed", ktAllCommitted(t, addr, cfg.Group, 4))

	parts := make([][]kafka.Message, 4)
	total := 0
	for p := range parts {
		parts[p] = ktRead(t, addr, p)
		total += len(parts[p])
	}
	// a committed everything it had read before b joined: no message was
	// read twice.
	if n := a.metric(t, "vigil_consumer_messages_total") + b.metric(t, "vigil_consumer_messages_total"); n != float64(total) {
		t.Errorf("%v messages read by a and b, want each of the %d exactly once", n, total)
	}
	_, wantDead, _ := ktReference(t, parts, false)
	gotDead := sink.deadLetters()
	for k, reason := range wantDead {
		if gotDead[k] != reason {
			t.Errorf("dead letter partition %d offset %d: got %q, want %q", k[0], k[1], gotDead[k], reason)
		}
	}
	wantIDs, _, _ := ktReference(t, parts, false)
	if got := sink.alertIDs(); !slices.Equal(got, wantIDs) {
		t.Errorf("alerts (a kept %v): got %d %v\nwant %d %v", kept, len(got), got, len(wantIDs), wantIDs)
	}
	a.stop(t)
	b.stop(t)
}

// While the sink fails, the partition blocks and nothing is committed past
// the undelivered output; when it recovers, every alert and dead letter
// arrives and the offsets reach the end.
func TestRuntimeFailingSinkBlocksCommits(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 4)
	cfg := ktConfig(addr)
	sink := newKtRecorder()
	events := ktEvents(t)
	half := len(events) / 2

	a := ktStart(t, "a", cfg, sink, nil)
	ktWrite(t, addr, nil, events[:half])
	ktWait(t, 30*time.Second, "first half committed", ktAllCommitted(t, addr, cfg.Group, 4))

	// The sink goes down; then every partition receives an invalid event
	// (a dead letter the sink must take) and the rest of the stream.
	sink.failing.Store(true)
	before := ktEnds(t, addr, 4)
	var bad []kafka.Message
	for p := range 4 {
		bad = append(bad, kafka.Message{
			Key: []byte("broken"), Value: []byte(`{"event_id":`),
			Headers: []kafka.Header{{Key: ktPartitionHeader, Value: []byte(strconv.Itoa(p))}},
		})
	}
	ktWrite(t, addr, nil, bad)
	ktWrite(t, addr, nil, events[half:])
	ktWait(t, 10*time.Second, "the sink to be retried", func() bool { return sink.failures.Load() >= 40 })
	for range 5 {
		for p, c := range ktCommitted(t, addr, cfg.Group, 4) {
			if c > before[p] {
				t.Fatalf("partition %d committed %d while the dead letter at offset %d is undelivered", p, c, before[p])
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !a.rt.Ready() {
		t.Error("not ready while blocked on the sink")
	}

	sink.failing.Store(false)
	ktWait(t, 30*time.Second, "everything committed after recovery", ktAllCommitted(t, addr, cfg.Group, 4))
	parts := make([][]kafka.Message, 4)
	for p := range parts {
		parts[p] = ktRead(t, addr, p)
	}
	wantIDs, wantDead, _ := ktReference(t, parts, false)
	if got := sink.alertIDs(); !slices.Equal(got, wantIDs) {
		t.Errorf("alerts: got %d %v\nwant %d %v", len(got), got, len(wantIDs), wantIDs)
	}
	gotDead := sink.deadLetters()
	if !maps.Equal(gotDead, wantDead) {
		t.Errorf("dead letters: got %v\nwant %v", gotDead, wantDead)
	}
	for p := range 4 {
		if gotDead[[2]int64{int64(p), before[p]}] != features.ReasonBadJSON {
			t.Errorf("partition %d: the invalid event at offset %d did not arrive as bad_json", p, before[p])
		}
	}
	a.stop(t)
}

// Stopping commits what was processed and written, even between commit
// intervals, and returns promptly.
func TestRuntimeCommitsOnShutdown(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 2)
	cfg := ktConfig(addr)
	cfg.CheckpointInterval = time.Hour
	var msgs []kafka.Message
	for i := range 100 {
		msgs = append(msgs, kafka.Message{Key: []byte{byte(i % 7)}, Value: []byte(fmt.Sprintf(`{"event_id":"e%d","ts":"2026-03-02T00:%02d:00Z","agent_id":"a%d","target_id":"t","action":"x","decision":"allow"}`, i, i%60, i%7))})
	}
	ktWrite(t, addr, nil, msgs)
	a := ktStart(t, "a", cfg, newKtRecorder(), nil)
	ktWait(t, 20*time.Second, "every message read", func() bool { return a.metric(t, "vigil_consumer_messages_total") == 100 })
	if c := ktCommitted(t, addr, cfg.Group, 2); c[0] >= 0 || c[1] >= 0 {
		t.Fatalf("committed %v before the commit interval", c)
	}
	start := time.Now()
	a.stop(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
	if c := ktCommitted(t, addr, cfg.Group, 2); c[0]+c[1] != 100 {
		t.Errorf("committed %v after stopping, want all 100 messages", c)
	}
}

// A sink's permanent error stops the runtime with that error, without
// committing past the batch.
func TestRuntimePermanentSinkErrorStops(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 1)
	cfg := ktConfig(addr)
	rt, err := NewRuntime(cfg, DefaultConfig(), ktFailSink{}, nil, ktLog(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	ktWrite(t, addr, nil, []kafka.Message{{Value: []byte(`{"event_id":"x","ts":"2026-03-02T00:00:00Z","agent_id":"a","target_id":"t","action":"x","decision":"allow"}`)}, {Value: []byte("not json")}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = rt.Run(ctx)
	if !errors.Is(err, ErrPermanent) {
		t.Fatalf("Run: %v, want an error wrapping ErrPermanent", err)
	}
	if c := ktCommitted(t, addr, cfg.Group, 1)[0]; c > 1 {
		t.Errorf("committed %d past the rejected batch at offset 1", c)
	}
}

type ktFailSink struct{}

func (ktFailSink) Name() string { return "fail" }
func (ktFailSink) Write(context.Context, Batch) error {
	return fmt.Errorf("fail: schema rejected: %w", ErrPermanent)
}

// SASL/SCRAM with the password from the environment: the group, the
// partition readers and the commits all authenticate.
func TestRuntimeSASLSCRAM(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 2, kfake.EnableSASL(), kfake.Superuser(SASLScramSHA512, "vigil", "s3cret-pw"))
	t.Setenv("VIGIL_TEST_KAFKA_PASSWORD", "s3cret-pw")
	cfg := ktConfig(addr)
	cfg.SASL = SASLConfig{Mechanism: SASLScramSHA512, Username: "vigil", PasswordEnv: "VIGIL_TEST_KAFKA_PASSWORD"}
	mech, err := scram.Mechanism(scram.SHA512, "vigil", "s3cret-pw")
	if err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for i := range 50 {
		msgs = append(msgs, kafka.Message{Key: []byte{byte(i)}, Value: []byte(fmt.Sprintf(`{"event_id":"e%d","ts":"2026-03-02T00:00:%02dZ","agent_id":"a%d","target_id":"t","action":"x","decision":"allow"}`, i, i, i%5))})
	}
	ktWrite(t, addr, &kafka.Transport{SASL: mech}, msgs)
	sink := newKtRecorder()
	a := ktStart(t, "a", cfg, sink, nil)
	ktWait(t, 20*time.Second, "offsets committed with SASL", func() bool {
		c := ktOffsetsSASL(t, addr, cfg.Group, mech)
		return c.ends[0]+c.ends[1] == 50 && slices.Equal(c.committed, c.ends)
	})
	a.stop(t)

	// A wrong password fails at the broker: never ready, retried (and
	// logged) until cancelled.
	t.Setenv("VIGIL_TEST_KAFKA_PASSWORD", "wrong")
	cfg.Group = "other"
	w := ktStart(t, "wrong", cfg, sink, nil)
	time.Sleep(time.Second)
	if w.rt.Ready() {
		t.Error("ready with a wrong password")
	}
	w.stop(t)
}

// TLS with the brokers' CA from a file, and SASL/PLAIN with the password
// from a file.
func TestRuntimeTLSAndPlain(t *testing.T) {
	ktLeakCheck(t)
	dir := t.TempDir()
	cert := ktSelfSigned(t, dir)
	addr := ktCluster(t, 2, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(), kfake.Superuser(SASLPlain, "vigil", "plain-pw"))
	if err := os.WriteFile(dir+"/password", []byte("plain-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := ktConfig(addr)
	cfg.TLS = TLSConfig{Enabled: true, CAFile: dir + "/ca.pem"}
	cfg.SASL = SASLConfig{Mechanism: SASLPlain, Username: "vigil", PasswordFile: dir + "/password"}
	d, err := cfg.Dialer()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for i := range 20 {
		msgs = append(msgs, kafka.Message{Key: []byte{byte(i)}, Value: []byte(fmt.Sprintf(`{"event_id":"e%d","ts":"2026-03-02T00:00:%02dZ","agent_id":"a%d","target_id":"t","action":"x","decision":"allow"}`, i, i, i%3))})
	}
	ktWrite(t, addr, &kafka.Transport{TLS: d.TLS, SASL: d.SASLMechanism}, msgs)
	a := ktStart(t, "a", cfg, newKtRecorder(), nil)
	ktWait(t, 20*time.Second, "every message read over TLS", func() bool { return a.metric(t, "vigil_consumer_messages_total") == 20 })
	a.stop(t)
	if c := ktOffsetsSASLTLS(t, addr, cfg.Group, d.SASLMechanism, d.TLS); c.committed[0]+c.committed[1] != 20 {
		t.Errorf("committed %v, want 20 in all", c.committed)
	}
}

// ktSelfSigned writes a self-signed certificate for 127.0.0.1 to dir/ca.pem
// and returns it with its key.
func ktSelfSigned(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kfake"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type ktOffsets struct{ committed, ends []int64 }

func ktOffsetsSASL(t *testing.T, addr, group string, mech sasl.Mechanism) ktOffsets {
	t.Helper()
	return ktOffsetsSASLTLS(t, addr, group, mech, nil)
}

func ktOffsetsSASLTLS(t *testing.T, addr, group string, mech sasl.Mechanism, tc *tls.Config) ktOffsets {
	t.Helper()
	tr := &kafka.Transport{SASL: mech, TLS: tc}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 10 * time.Second}
	ctx := context.Background()
	lo, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{ktTopic: {kafka.LastOffsetOf(0), kafka.LastOffsetOf(1)}}})
	if err != nil {
		t.Fatal(err)
	}
	of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{ktTopic: {0, 1}}})
	if err != nil {
		t.Fatal(err)
	}
	out := ktOffsets{committed: []int64{-1, -1}, ends: []int64{-1, -1}}
	for _, p := range lo.Topics[ktTopic] {
		out.ends[p.Partition] = p.LastOffset
	}
	for _, p := range of.Topics[ktTopic] {
		out.committed[p.Partition] = p.CommittedOffset
	}
	return out
}

// Configuration errors name the field.
func TestRuntimeConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*RuntimeConfig)
		field string
	}{
		{"no brokers", func(c *RuntimeConfig) { c.Brokers = nil }, "kafka.brokers"},
		{"broker without port", func(c *RuntimeConfig) { c.Brokers = []string{"kafka"} }, "kafka.brokers"},
		{"bad topic", func(c *RuntimeConfig) { c.Topic = "agent events" }, "kafka.topic"},
		{"empty group", func(c *RuntimeConfig) { c.Group = "" }, "kafka.group"},
		{"bad state topic", func(c *RuntimeConfig) { c.StateTopic = "vigil state" }, "kafka.state_topic"},
		{"state in the events topic", func(c *RuntimeConfig) { c.StateTopic = c.Topic }, "kafka.state_topic"},
		{"checkpoint interval", func(c *RuntimeConfig) { c.CheckpointInterval = 0 }, "kafka.checkpoint_interval"},
		{"start offset", func(c *RuntimeConfig) { c.StartOffset = "oldest" }, "kafka.start_offset"},
		{"idle timeout", func(c *RuntimeConfig) { c.IdleTimeout = 0 }, "kafka.idle_timeout"},
		{"max batch", func(c *RuntimeConfig) { c.MaxBatch = 0 }, "kafka.max_batch"},
		{"backoff order", func(c *RuntimeConfig) { c.MaxRetryBackoff = time.Millisecond }, "kafka.max_retry_backoff"},
		{"heartbeat", func(c *RuntimeConfig) { c.HeartbeatInterval = time.Minute }, "kafka.heartbeat_interval"},
		{"shutdown", func(c *RuntimeConfig) { c.ShutdownTimeout = time.Hour }, "kafka.shutdown_timeout"},
		{"half a key pair", func(c *RuntimeConfig) { c.TLS = TLSConfig{Enabled: true, CertFile: "c.pem"} }, "kafka.tls.cert_file"},
		{"tls files without tls", func(c *RuntimeConfig) { c.TLS.CAFile = "ca.pem" }, "kafka.tls.enabled"},
		{"unknown mechanism", func(c *RuntimeConfig) { c.SASL = SASLConfig{Mechanism: "GSSAPI", Username: "u", PasswordEnv: "P"} }, "kafka.sasl.mechanism"},
		{"no username", func(c *RuntimeConfig) { c.SASL = SASLConfig{Mechanism: SASLPlain, PasswordEnv: "P"} }, "kafka.sasl.username"},
		{"no password source", func(c *RuntimeConfig) { c.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u"} }, "kafka.sasl.password_file"},
		{"two password sources", func(c *RuntimeConfig) {
			c.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u", PasswordEnv: "P", PasswordFile: "f"}
		}, "kafka.sasl.password_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultRuntimeConfig()
			tc.edit(&c)
			err := c.Validate()
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Errorf("Validate: %v, want a ConfigError for %s", err, tc.field)
			}
		})
	}
	if err := DefaultRuntimeConfig().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	// Secrets are read when the dialer is built; a missing one is an error
	// naming where it should have come from.
	c := DefaultRuntimeConfig()
	c.SASL = SASLConfig{Mechanism: SASLScramSHA256, Username: "u", PasswordEnv: "VIGIL_TEST_UNSET_PASSWORD"}
	if _, err := c.Dialer(); err == nil || !strings.Contains(err.Error(), "VIGIL_TEST_UNSET_PASSWORD") {
		t.Errorf("Dialer with an unset password variable: %v", err)
	}
	c.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u", PasswordFile: t.TempDir() + "/missing"}
	if _, err := c.Dialer(); err == nil || !strings.Contains(err.Error(), "kafka.sasl.password_file") {
		t.Errorf("Dialer with a missing password file: %v", err)
	}
}

// ktDetConfig is the detector configuration of the runtime tests: the
// defaults, with agents evicted after 10 minutes idle (two windows) so that the short
// simulated fleets exercise eviction; the references they are compared
// with keep every agent in memory.
func ktDetConfig() Config {
	c := DefaultConfig()
	c.EvictAfter = 10 * time.Minute
	return c
}
