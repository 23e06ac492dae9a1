package detector

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/vigil-sec/vigil/sim"
)

// These tests run Runtimes against kfake with their state in the compacted
// state topic: members crash, stop and start, and the alerts are those of
// one uninterrupted Pipeline per partition.

// ktClusterC is ktCluster that also returns the cluster, to compact it.
func ktClusterC(t *testing.T, nparts int32, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(nparts, ktTopic)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

// ktSimMessages returns a simulated fleet's lines as messages keyed by
// agent_id for an nparts-partition topic; agents are spread over the
// partitions in order of first appearance.
func ktSimMessages(t *testing.T, cfg sim.Config, nparts int) []kafka.Message {
	t.Helper()
	part := make(map[string]int)
	var msgs []kafka.Message
	for _, l := range simLines(t, cfg) {
		key := l
		if _, after, ok := strings.Cut(string(l), `"agent_id":"`); ok {
			if id, _, ok := strings.Cut(after, `"`); ok {
				key = []byte(id)
			}
		}
		p, ok := part[string(key)]
		if !ok {
			p = len(part) % nparts
			part[string(key)] = p
		}
		msgs = append(msgs, kafka.Message{Key: key, Value: l,
			Headers: []kafka.Header{{Key: ktPartitionHeader, Value: []byte(strconv.Itoa(p))}}})
	}
	return msgs
}

// ktCutter makes a Runtime's connections and can cut them all at once, and
// refuse new ones: from then on the Runtime cannot reach the cluster at
// all, as if its process had died.
type ktCutter struct {
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
}

func (c *ktCutter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return nil, errors.New("cutter: this member is dead")
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		c.conns = append(c.conns, conn)
	}
	return conn, err
}

func (c *ktCutter) cutAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = true
	for _, conn := range c.conns {
		conn.Close()
	}
}

// ktDeadSink passes batches to a sink until the member dies.
type ktDeadSink struct {
	Sink
	dead atomic.Bool
}

func (s *ktDeadSink) Write(ctx context.Context, b Batch) error {
	if s.dead.Load() {
		return errors.New("dead")
	}
	return s.Sink.Write(ctx, b)
}

// ktStartRT is ktStart with a hook that adjusts the Runtime before it runs.
func ktStartRT(t *testing.T, name string, cfg RuntimeConfig, sink Sink, adjust func(*Runtime)) *ktRunning {
	t.Helper()
	reg := prometheus.NewRegistry()
	rt, err := NewRuntime(cfg, ktDetConfig(), sink, reg, ktLog(t, name))
	if err != nil {
		t.Fatal(err)
	}
	if adjust != nil {
		adjust(rt)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &ktRunning{rt: rt, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- rt.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// histCount returns the number of observations of a histogram.
func (r *ktRunning) histCount(t *testing.T, name string) uint64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func ktMessages(t *testing.T, rs ...*ktRunning) float64 {
	var n float64
	for _, r := range rs {
		n += r.metric(t, "vigil_consumer_messages_total")
	}
	return n
}

func ktAllParts(t *testing.T, addr string, n int) [][]kafka.Message {
	parts := make([][]kafka.Message, n)
	for p := range parts {
		parts[p] = ktRead(t, addr, p)
		if len(parts[p]) == 0 {
			t.Fatalf("partition %d is empty: the test needs every partition used", p)
		}
	}
	return parts
}

// Three members share six partitions. One of them dies (its connections cut
// at once: no commit, no checkpoint, no output after that point, and the
// group learns of it only when its session expires) after it has processed
// and written output past its last checkpoint. The survivors take its
// partitions over, restore them from the state topic, reprocess what it had
// not checkpointed, and the alerts written overall — deduplicated by
// alert_id — are exactly those of one uninterrupted Pipeline per partition,
// with every dead letter.
func TestRuntimeCrashedMemberLosesNothing(t *testing.T) {
	ktLeakCheck(t)
	_, addr := ktClusterC(t, 6)
	cfg := ktConfig(addr)
	sink := newKtRecorder()
	events := ktSimMessages(t, sim.Config{Seed: 2, Agents: 12, Days: 2, WarmupDays: 1, Incidents: 4}, 6)
	first, second := len(events)*2/5, len(events)*7/10

	// x checkpoints only when a generation ends (its interval is an hour).
	xcfg := cfg
	xcfg.CheckpointInterval = time.Hour
	cutter := &ktCutter{}
	xsink := &ktDeadSink{Sink: sink}
	a := ktStart(t, "a", cfg, sink, nil)
	b := ktStart(t, "b", cfg, sink, nil)
	x := ktStartRT(t, "x", xcfg, xsink, func(r *Runtime) { r.dial = cutter.dial })
	members := []*ktRunning{a, b, x}
	held := func(rs ...*ktRunning) bool {
		n := 0
		for _, r := range rs {
			p := r.rt.Assigned()
			if len(p) == 0 {
				return false
			}
			n += len(p)
		}
		return n == 6
	}
	ktWait(t, 30*time.Second, "three members to share the partitions", func() bool { return held(a, b, x) })

	ktWrite(t, addr, nil, events[:first])
	ktWait(t, 30*time.Second, "the first part read", func() bool { return ktMessages(t, members...) == float64(first) })
	// A fourth member comes and goes: two generations end, and every
	// partition is checkpointed as it is handed over (x's included).
	d := ktStart(t, "d", cfg, sink, nil)
	ktWait(t, 30*time.Second, "d to hold partitions", func() bool { return held(a, b, x, d) })
	d.stop(t)
	ktWait(t, 30*time.Second, "d's partitions handed back", func() bool { return held(a, b, x) })
	members = append(members, d)
	xParts := x.rt.Assigned()

	// x processes the second part and writes its output, but does not
	// checkpoint it; then it dies.
	ktWrite(t, addr, nil, events[first:second])
	ktWait(t, 30*time.Second, "the second part read", func() bool { return ktMessages(t, members...) == float64(second) })
	ktWait(t, 10*time.Second, "x's output written", func() bool { return x.metric(t, "vigil_output_write_failures_total") == 0 })
	committedAtCrash := ktCommitted(t, addr, cfg.Group, 6)
	xsink.dead.Store(true)
	cutter.cutAll()
	x.cancel()
	select {
	case <-x.done: // Run fails to leave the group: it cannot reach it
	case <-time.After(20 * time.Second):
		t.Fatal("the dead member's Run did not return")
	}
	x.done = nil

	ktWrite(t, addr, nil, events[second:])
	ktWait(t, 60*time.Second, "the survivors to take over and commit everything", ktAllCommitted(t, addr, cfg.Group, 6))
	for _, p := range xParts {
		t.Logf("x's partition %d: committed %d at the crash, end %d", p, committedAtCrash[p], ktEnds(t, addr, 6)[p])
	}

	parts := ktAllParts(t, addr, 6)
	wantIDs, wantDead, _ := ktReference(t, parts, false)
	if len(wantIDs) == 0 || len(wantDead) == 0 {
		t.Fatalf("reference has %d alerts and %d dead letters; the test needs both", len(wantIDs), len(wantDead))
	}
	if got := sink.alertIDs(); !slices.Equal(got, wantIDs) {
		t.Errorf("alerts: got %d %v\nwant %d %v", len(got), got, len(wantIDs), wantIDs)
	}
	if got := sink.deadLetters(); !maps.Equal(got, wantDead) {
		t.Errorf("dead letters: got %d, want %d", len(got), len(wantDead))
	}
	total := float64(len(events))
	read := ktMessages(t, members...)
	if read <= total {
		t.Errorf("%v messages read for %v: the dead member's unsaved work was not reprocessed, so the test proved nothing", read, total)
	}
	restores := a.histCount(t, "vigil_state_restore_duration_seconds") + b.histCount(t, "vigil_state_restore_duration_seconds")
	// Idle agents were evicted along the way (ktDetConfig's evict_after),
	// and checkpoints and restores carried them. How many come back before
	// the stream ends depends on when checkpoints fall (wall time), so
	// reloads are only logged here; TestEvictionIsInvisible pins them.
	var evictions, reloads float64
	for _, m := range members {
		evictions += m.metric(t, "vigil_detector_agent_evictions_total")
		reloads += m.metric(t, "vigil_detector_agent_reloads_total")
	}
	if evictions == 0 {
		t.Errorf("no evictions: the scenario must exercise eviction")
	}
	t.Logf("%v idle agents evicted, %v reloaded", evictions, reloads)
	t.Logf("%d alerts, %d dead letters; %v messages read for %v (x's unsaved work reprocessed); x held %v; a and b restored %d partitions",
		len(wantIDs), len(wantDead), read, total, xParts, restores)
	a.stop(t)
	b.stop(t)
}

// A member stops cleanly part way through the stream (checkpointing and
// committing what it processed), the state topic is compacted, two of the
// commits are undone (as if it had died between checkpoint and commit), and
// a new member continues from the checkpoints: nothing is read twice, and
// the alerts are exactly those of one uninterrupted Pipeline per partition.
func TestRuntimeRestartRestoresState(t *testing.T) {
	ktLeakCheck(t)
	c, addr := ktClusterC(t, 4)
	cfg := ktConfig(addr)
	sink := newKtRecorder()
	events := ktEvents(t)
	q := len(events) / 4

	a := ktStart(t, "a", cfg, sink, nil)
	// Three quarters, each checkpointed (so that compaction finds records
	// superseded), then the last quarter and at once a clean stop.
	for i := range 3 {
		ktWrite(t, addr, nil, events[i*q:(i+1)*q])
		ktWait(t, 30*time.Second, "a quarter committed", ktAllCommitted(t, addr, cfg.Group, 4))
	}
	ktWrite(t, addr, nil, events[3*q:])
	a.stop(t) // at once: mid-stream
	readByA := a.metric(t, "vigil_consumer_messages_total")

	before := ktStateRecords(t, addr, 4)
	c.Compact()
	after := ktStateRecords(t, addr, 4)
	if after >= before {
		t.Errorf("compaction left %d of %d state records: the test would not exercise a compacted topic", after, before)
	}
	// As if a's last commits of partitions 0 and 1 had not happened (it
	// died between its checkpoint and its commit): b resumes at the
	// checkpoint all the same, and reads nothing twice.
	committed := ktCommitted(t, addr, cfg.Group, 4)
	ktCommit(t, addr, cfg.Group, map[int]int64{0: 0, 1: committed[1] / 2})

	b := ktStart(t, "b", cfg, sink, nil)
	ktWait(t, 30*time.Second, "everything committed", ktAllCommitted(t, addr, cfg.Group, 4))
	parts := ktAllParts(t, addr, 4)
	wantIDs, wantDead, _ := ktReference(t, parts, false)
	if got := sink.alertIDs(); !slices.Equal(got, wantIDs) {
		t.Errorf("alerts: got %d %v\nwant %d %v", len(got), got, len(wantIDs), wantIDs)
	}
	if got := sink.deadLetters(); !maps.Equal(got, wantDead) {
		t.Errorf("dead letters: got %d, want %d", len(got), len(wantDead))
	}
	readByB := b.metric(t, "vigil_consumer_messages_total")
	if readByA+readByB != float64(len(events)) {
		t.Errorf("a read %v and b %v messages of %d: after a clean stop nothing is read twice", readByA, readByB, len(events))
	}
	if n := b.histCount(t, "vigil_state_restore_duration_seconds"); n != 4 {
		t.Errorf("b restored %d partitions, want 4", n)
	}
	t.Logf("a read %v messages and stopped, b read %v; %d alerts; compaction: %d → %d state records", readByA, readByB, len(wantIDs), before, after)
	b.stop(t)
}

// ktCommit commits offsets for an empty group, as an administrator would.
func ktCommit(t *testing.T, addr, group string, offsets map[int]int64) {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 10 * time.Second}
	var oc []kafka.OffsetCommit
	for p, o := range offsets {
		oc = append(oc, kafka.OffsetCommit{Partition: p, Offset: o})
	}
	resp, err := cl.OffsetCommit(context.Background(), &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{ktTopic: oc}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.Topics[ktTopic] {
		if p.Error != nil {
			t.Fatalf("commit partition %d: %v", p.Partition, p.Error)
		}
	}
	got := ktCommitted(t, addr, group, len(offsets)+2)
	for p, o := range offsets {
		if got[p] != o {
			t.Fatalf("partition %d committed at %d after committing %d", p, got[p], o)
		}
	}
}

// ktStateRecords counts the records left in the state topic.
func ktStateRecords(t *testing.T, addr string, n int) int {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	s := &stateStore{topic: "vigil-state", cl: &kafka.Client{Addr: kafka.TCP(addr), Transport: tr}}
	total := 0
	for p := range n {
		scan := newStateScan()
		if _, err := s.read(context.Background(), p, scan); err != nil {
			t.Fatal(err)
		}
		total += scan.records
	}
	return total
}

// The state topic is created compacted with the events topic's partitions
// when missing; one with a different number of partitions stops Run with an
// error naming kafka.state_topic.
func TestRuntimeStateTopicChecks(t *testing.T) {
	ktLeakCheck(t)
	addr := ktCluster(t, 3, kfake.SeedTopics(2, "other-state"))
	cfg := ktConfig(addr)
	a := ktStart(t, "a", cfg, newKtRecorder(), nil)
	ktWait(t, 20*time.Second, "a to join", a.rt.Ready)
	a.stop(t)
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr}
	md, err := cl.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{"vigil-state"}})
	if err != nil || len(md.Topics) != 1 || len(md.Topics[0].Partitions) != 3 {
		t.Fatalf("state topic after Run: %+v, %v; want vigil-state with 3 partitions", md, err)
	}
	dc, err := cl.DescribeConfigs(context.Background(), &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: "vigil-state", ConfigNames: []string{"cleanup.policy"}}}})
	if err != nil || len(dc.Resources) != 1 || len(dc.Resources[0].ConfigEntries) != 1 || dc.Resources[0].ConfigEntries[0].ConfigValue != "compact" {
		t.Errorf("state topic configs: %+v, %v; want cleanup.policy=compact", dc, err)
	}

	cfg.StateTopic = "other-state"
	rt, err := NewRuntime(cfg, DefaultConfig(), newKtRecorder(), nil, ktLog(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := rt.Run(ctx); err == nil || !strings.Contains(err.Error(), "kafka.state_topic") || !strings.Contains(err.Error(), "2 partitions") {
		t.Errorf("Run with a 2-partition state topic for 3 event partitions: %v", err)
	}
}
