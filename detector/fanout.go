package detector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Fanout is a Sink that writes every batch to several sinks at once and
// returns when all of them have it: the Runtime commits an offset only past
// what every sink made durable. Each sink is retried on its own with capped
// exponential backoff (with jitter) until it succeeds, fails permanently or
// ctx ends, so a sink that is down blocks its partitions (backpressure)
// while the others are not written twice. Per-sink metrics: outputs
// written, writes by result, retries, write latency and the outputs waiting
// for the sink.
type Fanout struct {
	sinks      []*sinkWriter
	backoff    time.Duration
	maxBackoff time.Duration
	log        *slog.Logger
}

type sinkWriter struct {
	s       Sink
	outputs *prometheus.CounterVec
	ok, bad prometheus.Counter
	retries prometheus.Counter
	latency prometheus.Observer
	queue   prometheus.Gauge
}

// NewFanout returns a Fanout over sinks (at least one), registering its
// metrics with reg (nil: not registered). backoff and maxBackoff bound the
// retry delays; log may be nil.
func NewFanout(reg prometheus.Registerer, log *slog.Logger, backoff, maxBackoff time.Duration, sinks ...Sink) (*Fanout, error) {
	if len(sinks) == 0 {
		return nil, errors.New("fanout: no sinks")
	}
	if backoff <= 0 || maxBackoff < backoff {
		return nil, errors.New("fanout: want 0 < backoff ≤ max backoff")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := promauto.With(reg)
	outputs := f.NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_sink_outputs_total", Help: "Outputs made durable in a sink, by sink and output type (alerts, revocations, windows, dead_letters, outcomes).",
	}, []string{"sink", "output"})
	writes := f.NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_sink_writes_total", Help: "Batch writes to a sink, by result (ok, error).",
	}, []string{"sink", "result"})
	retries := f.NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_sink_retries_total", Help: "Batch writes retried after a failure, by sink.",
	}, []string{"sink"})
	latency := f.NewHistogramVec(prometheus.HistogramOpts{
		Name: "vigil_sink_write_duration_seconds", Help: "Time for one batch write attempt, by sink.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
	}, []string{"sink"})
	queue := f.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vigil_sink_queue_outputs", Help: "Outputs waiting to be made durable in a sink (partitions blocked on it), by sink.",
	}, []string{"sink"})
	fo := &Fanout{backoff: backoff, maxBackoff: maxBackoff, log: log}
	seen := map[string]bool{}
	for _, s := range sinks {
		n := s.Name()
		if seen[n] {
			return nil, fmt.Errorf("fanout: two sinks named %q", n)
		}
		seen[n] = true
		fo.sinks = append(fo.sinks, &sinkWriter{
			s: s, outputs: outputs.MustCurryWith(prometheus.Labels{"sink": n}),
			ok: writes.WithLabelValues(n, "ok"), bad: writes.WithLabelValues(n, "error"),
			retries: retries.WithLabelValues(n), latency: latency.WithLabelValues(n), queue: queue.WithLabelValues(n),
		})
	}
	return fo, nil
}

// Name lists the sinks.
func (f *Fanout) Name() string {
	names := make([]string, len(f.sinks))
	for i, w := range f.sinks {
		names[i] = w.s.Name()
	}
	return strings.Join(names, "+")
}

// Write writes b to every sink; see Fanout.
func (f *Fanout) Write(ctx context.Context, b Batch) error {
	if b.Len() == 0 {
		return nil
	}
	if len(f.sinks) == 1 {
		return f.write(ctx, f.sinks[0], b)
	}
	errs := make([]error, len(f.sinks))
	var wg sync.WaitGroup
	for i, w := range f.sinks {
		wg.Go(func() { errs[i] = f.write(ctx, w, b) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (f *Fanout) write(ctx context.Context, w *sinkWriter, b Batch) error {
	n := float64(b.Len())
	w.queue.Add(n)
	defer w.queue.Sub(n)
	backoff := f.backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := w.s.Write(ctx, b)
		w.latency.Observe(time.Since(start).Seconds())
		if err == nil {
			w.ok.Inc()
			w.count(&b)
			if attempt > 1 {
				f.log.Info("sink recovered", "sink", w.s.Name(), "attempts", attempt, "partition", b.Partition)
			}
			return nil
		}
		w.bad.Inc()
		if errors.Is(err, ErrPermanent) {
			return fmt.Errorf("sink %s: %w", w.s.Name(), err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("sink %s: %w (stopped: %w)", w.s.Name(), err, context.Cause(ctx))
		}
		if attempt == 1 || attempt%10 == 0 {
			f.log.Warn("sink write failed; partition blocked, retrying", "sink", w.s.Name(), "partition", b.Partition,
				"attempt", attempt, "backoff", backoff, "err", err)
		}
		w.retries.Inc()
		if !sleep(ctx, backoff/2+rand.N(backoff/2+1)) {
			return fmt.Errorf("sink %s: %w (stopped: %w)", w.s.Name(), err, context.Cause(ctx))
		}
		backoff = min(2*backoff, f.maxBackoff)
	}
}

func (w *sinkWriter) count(b *Batch) {
	add := func(kind string, n int) {
		if n > 0 {
			w.outputs.WithLabelValues(kind).Add(float64(n))
		}
	}
	add("alerts", len(b.Alerts))
	add("revocations", len(b.Revocations))
	add("windows", len(b.Windows))
	add("dead_letters", len(b.DeadLetters))
	add("outcomes", len(b.Outcomes))
}
