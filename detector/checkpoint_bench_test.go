package detector

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// benchFleet builds a pipeline holding agents agents in 20 peer groups, each
// with a learned baseline (two hours of traffic to a handful of targets, a
// few events every window) and an open window, as one busy partition holds
// them between two checkpoints. more(round) returns events of the next ten
// seconds, one for each of a tenth of the agents (about what a checkpoint
// interval brings such a fleet), new ones in each round.
func benchFleet(b *testing.B, agents int) (p *Pipeline, more func(round int) [][]byte) {
	b.Helper()
	p, err := NewPipeline(DefaultConfig(), nil)
	if err != nil {
		b.Fatal(err)
	}
	p.TrackChanges()
	rng := rand.New(rand.NewPCG(1, 2))
	id := func(i int) string { return fmt.Sprintf("spiffe://bank.example/agent/a-%06d", i) }
	ev := func(i, n int, ts time.Time) []byte {
		e := ev{id: fmt.Sprintf("%d-%d", i, n), agent: id(i), class: fmt.Sprintf("class-%02d", i%20),
			target: fmt.Sprintf("svc-%d", rng.IntN(6)), action: fmt.Sprintf("op.%d", rng.IntN(4)), ts: ts, bytesOut: 500 + rng.IntN(1000)}
		return []byte(e.json())
	}
	window := DefaultConfig().Model.WindowSize
	n := 0
	for w := range int(2 * time.Hour / window) {
		start := t0.Add(time.Duration(w) * window)
		for k := range 3 {
			for i := range agents {
				ts := start.Add(time.Duration(k)*window/3 + time.Duration(i)*window/3/time.Duration(agents))
				if err := p.Process(ev(i, n, ts)); err != nil {
					b.Fatal(err)
				}
				n++
			}
		}
	}
	p.TakeChanges(nil, nil)
	more = func(round int) [][]byte {
		at := t0.Add(2*time.Hour + time.Duration(round)*10*time.Second)
		var out [][]byte
		for i := round % 10; i < agents; i += 10 {
			out = append(out, ev(i, n, at.Add(time.Duration(i)*10*time.Second/time.Duration(agents))))
			n++
		}
		return out
	}
	return p, more
}

// snapshotAll returns every record of a full checkpoint of p (values only).
func snapshotAll(p *Pipeline) (parts, classes, agents [][]byte, size int) {
	parts = [][]byte{p.AppendPartitionState(nil)}
	for _, name := range p.ClassNames(nil) {
		c, _ := p.AppendClassState(nil, name)
		classes = append(classes, c)
	}
	for _, id := range p.AgentIDs(nil) {
		a, _ := p.AppendAgentState(nil, id)
		agents = append(agents, a)
	}
	for _, s := range [][][]byte{parts, classes, agents} {
		for _, v := range s {
			size += len(v)
		}
	}
	return parts, classes, agents, size
}

// BenchmarkCheckpointSnapshot10k is the CPU cost of serialising a full
// checkpoint of 10,000 agents (what a partition's new owner writes first),
// without I/O.
//
//	go test -run '^$' -bench 'Checkpoint|Restore' -benchmem ./detector
func BenchmarkCheckpointSnapshot10k(b *testing.B) {
	p, _ := benchFleet(b, 10000)
	_, _, agents, size := snapshotAll(p)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		snapshotAll(p)
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB")
	b.ReportMetric(float64(size)/float64(len(agents)), "B/agent")
}

// BenchmarkRestore10k is the CPU cost of restoring 10,000 agents from their
// snapshots into a new pipeline, without I/O.
func BenchmarkRestore10k(b *testing.B) {
	p, _ := benchFleet(b, 10000)
	parts, classes, agents, _ := snapshotAll(p)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		q, _ := NewPipeline(DefaultConfig(), nil)
		if err := q.RestorePartitionState(parts[0]); err != nil {
			b.Fatal(err)
		}
		for _, c := range classes {
			if err := q.RestoreClass(c); err != nil {
				b.Fatal(err)
			}
		}
		for _, a := range agents {
			if err := q.RestoreAgent(a); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkStateKafka10k writes checkpoints of a partition holding 10,000
// agents to a state topic on kfake (in this process, so it shares the CPUs)
// and restores the partition from it, as a new owner does: the full
// checkpoint of a new term, an incremental one (a tenth of the agents
// changed), and the restore (read the partition, select, decode).
//
//	go test -run '^$' -bench StateKafka -benchtime 5x ./detector
func BenchmarkStateKafka10k(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, ktTopic))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cfg := DefaultRuntimeConfig()
	cfg.Brokers, cfg.Topic = c.ListenAddrs(), ktTopic
	reg := prometheus.NewRegistry()
	rt, err := NewRuntime(cfg, DefaultConfig(), discardSink{}, reg, nil)
	if err != nil {
		b.Fatal(err)
	}
	written := func() float64 { return (&ktRunning{reg: reg}).metric(b, "vigil_state_checkpoint_bytes_total") }
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	rt.state = &stateStore{topic: cfg.StateTopic, events: cfg.Topic, cl: &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: tr}}
	ctx := context.Background()
	if err := rt.state.prepare(ctx, rt.log, time.Second); err != nil {
		b.Fatal(err)
	}
	p, more := benchFleet(b, 10000)
	ps := &partState{id: 0, p: p, next: 1, ck: ckState{offset: -1}}
	var full, incr, restore time.Duration
	var fullBytes, incrBytes, readBytes float64
	b.ResetTimer()
	for i := range b.N {
		// A topic of its own each time: the partition then holds one full
		// and one incremental checkpoint, as after a handover.
		rt.state.topic = fmt.Sprintf("state-%d", i)
		rt.cfg.StateTopic = rt.state.topic
		if err := rt.state.prepare(ctx, rt.log, time.Second); err != nil {
			b.Fatal(err)
		}
		ps.ck = ckState{offset: -1}
		ps.ck.newTerm()
		b0 := written()
		t := time.Now()
		if err := rt.checkpoint(ctx, ps); err != nil {
			b.Fatal(err)
		}
		full += time.Since(t)
		b1 := written()
		for _, e := range more(i) {
			if err := p.Process(e); err != nil {
				b.Fatal(err)
			}
		}
		ps.next++
		t = time.Now()
		if err := rt.checkpoint(ctx, ps); err != nil {
			b.Fatal(err)
		}
		incr += time.Since(t)
		b2 := written()
		fullBytes, incrBytes = b1-b0, b2-b1

		t = time.Now()
		q, err := rt.newPartState(0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := rt.restore(ctx, q, -1, rt.log); err != nil {
			b.Fatal(err)
		}
		restore += time.Since(t)
		if len(q.p.agents) != 10000 {
			b.Fatalf("restored %d agents", len(q.p.agents))
		}
		readBytes = fullBytes + incrBytes
	}
	n := float64(b.N)
	b.ReportMetric(full.Seconds()/n, "full-ckpt-s")
	b.ReportMetric(fullBytes/(1<<20), "full-MiB")
	b.ReportMetric(incr.Seconds()/n, "incr-ckpt-s")
	b.ReportMetric(incrBytes/(1<<20), "incr-MiB")
	b.ReportMetric(restore.Seconds()/n, "restore-s")
	b.ReportMetric(readBytes/(1<<20), "restore-MiB")
}
