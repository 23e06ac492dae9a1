package bench_test

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"sync"
	"testing"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
)

// benchSim is a small simulated fleet (40 agents over 4 days, 6 incidents, with the
// simulator's deliberate duplicates and invalid lines), generated once per test binary.
var benchSim = sync.OnceValues(func() ([]byte, error) {
	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Seed = 40, 4, 2, 6, 1
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := sim.Generate(cfg, &buf, io.Discard); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
})

func benchEvents(b *testing.B) []byte {
	b.Helper()
	data, err := benchSim()
	if err != nil {
		b.Fatal(err)
	}
	return data
}

func discardAlert(*detector.Alert) {}

// BenchmarkReplay measures a whole replay of the small simulation with the default
// configuration: a new pipeline, decoding, dedup, windows, scoring, policy and the
// final flush. One op is one replay of every line.
func BenchmarkReplay(b *testing.B) {
	data := benchEvents(b)
	lines := bytes.Count(data, []byte{'\n'})
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for b.Loop() {
		p, err := detector.NewPipeline(detector.DefaultConfig(), discardAlert)
		if err != nil {
			b.Fatal(err)
		}
		if err := detector.Replay(context.Background(), bytes.NewReader(data), p, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	events := float64(lines) * float64(b.N)
	b.ReportMetric(events/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/events, "allocs/event")
}

// BenchmarkPipelineProcess measures the steady-state cost of one event: a pipeline
// warmed on the first half of the simulation processes the second half, one line per
// op. Lines are never repeated (a repeat would be dropped as a duplicate); when they
// run out, a freshly warmed pipeline starts over, outside the timer.
func BenchmarkPipelineProcess(b *testing.B) {
	data := benchEvents(b)
	lines := bytes.Split(bytes.TrimSuffix(data, []byte{'\n'}), []byte{'\n'})
	warmup, timed := lines[:len(lines)/2], lines[len(lines)/2:]
	warm := func() *detector.Pipeline {
		p, err := detector.NewPipeline(detector.DefaultConfig(), discardAlert)
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range warmup {
			_ = p.Process(l) // the simulator's invalid lines are rejected, as they should be
		}
		return p
	}
	p := warm()
	next := 0
	b.ReportAllocs()
	for b.Loop() {
		if next == len(timed) {
			b.StopTimer()
			p, next = warm(), 0
			b.StartTimer()
		}
		_ = p.Process(timed[next])
		next++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}
