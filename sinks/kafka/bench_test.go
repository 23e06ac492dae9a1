package kafkasink

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
)

// Throughput through kfake (in-process, loopback, acks=all): how many
// revocation requests and dead letters per second the sinks make durable.
// One writer with one output per Write is the latency-bound case (a worker
// that has caught up writes each urgent output at once); 6 writers with 100
// per Write is a backlog on 6 partitions.
//
//	go test -run '^$' -bench . -benchtime 2s ./sinks/kafka/
func BenchmarkRevocations(b *testing.B) {
	signer := testSigner(b)
	pool := make([]*detector.Revocation, 1000)
	for i := range pool {
		pool[i] = revocation(b, signer, fmt.Sprintf("spiffe://bank.example/agent/bot-%03d", i%200), i/200)
	}
	bytes := 0
	for _, rv := range pool {
		bytes += len(rv.Body)
	}
	b.Logf("revocation body: %d bytes on average", bytes/len(pool))
	batch := func(i, n int) detector.Batch {
		rvs := make([]*detector.Revocation, n)
		for j := range rvs {
			rvs[j] = pool[(i*n+j)%len(pool)]
		}
		return detector.Batch{Revocations: rvs}
	}
	benchSink(b, "revocations/s", func(tb testing.TB, addr string) *Sink { return newRevocations(tb, addr) }, batch)
}

func BenchmarkDeadLetters(b *testing.B) {
	ts := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	value := []byte(`{"event_id":"e-000000001","ts":"2026-03-02T10:00:00Z","agent_id":"spiffe://bank.example/agent/bot-001","target_id":"svc-ledger","action":"POST /v1/transfers","decision":"allow","bytes_out":"many"}`)
	batch := func(i, n int) detector.Batch {
		dls := make([]detector.DeadLetter, n)
		for j := range dls {
			dls[j] = detector.DeadLetter{Topic: eventsTopic, Partition: j % 6, Offset: int64(i*n + j),
				Key: []byte("spiffe://bank.example/agent/bot-001"), Value: value, Time: ts,
				Reason: features.ReasonBadType, Detail: "bytes_out: want an integer ≥ 0, not a string"}
		}
		return detector.Batch{DeadLetters: dls}
	}
	benchSink(b, "dead_letters/s", func(tb testing.TB, addr string) *Sink { return newDeadLetters(tb, addr) }, batch)
}

func benchSink(b *testing.B, unit string, newSink func(testing.TB, string) *Sink, batch func(i, n int) detector.Batch) {
	for _, bc := range []struct{ writers, perWrite int }{{1, 1}, {6, 100}} {
		b.Run(fmt.Sprintf("writers=%d/per_write=%d", bc.writers, bc.perWrite), func(b *testing.B) {
			_, addr := cluster(b)
			s := newSink(b, addr)
			batches := make([]detector.Batch, 64)
			for i := range batches {
				batches[i] = batch(i, bc.perWrite)
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range bc.writers {
				wg.Go(func() {
					for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
						if err := s.Write(context.Background(), batches[i%int64(len(batches))]); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N*bc.perWrite)/time.Since(start).Seconds(), unit)
		})
	}
}
