package alertmanager

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// BenchmarkWrite posts batches of 100 alerts to real Alertmanagers (one,
// and an HA pair that gets every batch) and reports alerts/s. The alerts
// cycle over 20,000 agents: after the first lap every alert refreshes one
// Alertmanager already holds, as a fleet with many anomalous agents would.
//
//	go test -run '^$' -bench Write -benchtime 2000x ./sinks/alertmanager
func BenchmarkWrite(b *testing.B) {
	const batch, agents = 100, 20_000
	for _, n := range []int{1, 2} {
		b.Run("alertmanagers="+strconv.Itoa(n), func(b *testing.B) {
			var urls []string
			for range n {
				urls = append(urls, sinktest.StartAlertmanager(b).URL())
			}
			s := newTestSink(b, nil, Config{MaxActive: agents}, urls...)
			ctx := context.Background()
			alerts := make([]*detector.Alert, agents)
			for i := range alerts {
				alerts[i] = liveAlert("spiffe://bank.example/agent/bench-"+strconv.Itoa(i), detector.Kinds[i%len(detector.Kinds)], detector.SeverityCritical)
			}
			b.ReportAllocs()
			start, i := time.Now(), 0
			for ; b.Loop(); i++ {
				off := i * batch % agents
				if err := s.Write(ctx, detector.Batch{Alerts: alerts[off : off+batch]}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(i*batch)/time.Since(start).Seconds(), "alerts/s")
		})
	}
}
