package detector

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkIdleAgentMemory reports the heap held per idle agent: each agent
// sent a few events, its windows closed, and it now only holds its baseline
// and first-seen set. Agents arrive spread over a day, a few hundred per
// window, as a fleet does.
func BenchmarkIdleAgentMemory(b *testing.B) {
	const agents = 20000
	for b.Loop() {
		p, err := NewPipeline(memConfig(agents), nil)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		idleFleet(b, p, agents)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/agents, "bytes/agent")
		runtime.KeepAlive(p)
	}
}

// BenchmarkEvictedAgentMemory reports the heap held per agent once idle
// agents are evicted to a spill file (the index entry: id and offset).
func BenchmarkEvictedAgentMemory(b *testing.B) {
	const agents = 20000
	for b.Loop() {
		p, err := NewPipeline(memConfig(agents), nil)
		if err != nil {
			b.Fatal(err)
		}
		sp, err := NewSpillFile(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		p.SetStore(sp)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ts := idleFleet(b, p, agents)
		if n, err := p.Evict(ts.UnixNano()); err != nil || n != agents {
			b.Fatalf("evicted %d of %d: %v", n, agents, err)
		}
		p.spillBuf = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/agents, "bytes/agent")
		runtime.KeepAlive(p)
		sp.Close()
	}
}

// idleFleet sends agents three events each, spread as a fleet's arrive, and
// flushes p so every window is closed; it returns the time after the last.
func idleFleet(b *testing.B, p *Pipeline, agents int) time.Time {
	ts := t0
	for i := range agents {
		for j := range 3 {
			e := ev{id: fmt.Sprintf("%d-%d", i, j), agent: fmt.Sprintf("spiffe://bank.example/agent/a-%06d", i),
				class: fmt.Sprintf("class-%d", i%20), target: fmt.Sprintf("t%d", j), action: "op", ts: ts, bytesOut: 100}
			if err := p.Process([]byte(e.json())); err != nil {
				b.Fatal(err)
			}
			ts = ts.Add(1500 * time.Millisecond)
		}
	}
	p.Flush()
	return ts
}

// memConfig is the default configuration holding a fleet of n agents that
// are all new at once (the bound on new identities would refuse most).
func memConfig(n int) Config {
	cfg := DefaultConfig()
	cfg.MaxNewAgents = max(cfg.MaxNewAgents, n)
	return cfg
}
