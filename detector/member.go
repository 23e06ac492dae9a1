package detector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// member is what the Runtime and the Repartitioner share as members of a
// kafka-go consumer group: joining and re-joining it, the partitions held,
// readiness, their workers, and the first fatal error, which stops Run.
type member struct {
	group    string
	log      *slog.Logger
	gauge    prometheus.Gauge // partitions held
	ready    atomic.Bool
	workers  sync.WaitGroup // partition workers, across generations
	mu       sync.Mutex     // guards assigned, fatal, stop (and the owner's own fields)
	assigned []int
	fatal    error
	stop     context.CancelCauseFunc
}

// Ready reports whether it has joined its consumer group: true from the
// first generation until Run returns. Safe for concurrent use.
func (m *member) Ready() bool { return m.ready.Load() }

// Assigned returns the partitions held in the current generation, sorted.
// Safe for concurrent use.
func (m *member) Assigned() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.assigned)
}

// start makes ctx the context that fail cancels.
func (m *member) start(ctx context.Context) (context.Context, context.CancelCauseFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	m.mu.Lock()
	m.stop = cancel
	m.mu.Unlock()
	return ctx, cancel
}

// fail stops Run with err (the first one wins).
func (m *member) fail(err error) {
	m.mu.Lock()
	if m.fatal == nil {
		m.fatal = err
	}
	stop := m.stop
	m.mu.Unlock()
	if stop != nil {
		stop(err)
	}
}

func (m *member) setAssigned(ids []int) {
	m.mu.Lock()
	m.assigned = ids
	m.mu.Unlock()
	m.gauge.Set(float64(len(ids)))
}

// generation records the partitions of topic that gen assigns here, once
// every worker of the previous generation has returned, and returns them.
func (m *member) generation(gen *kafka.Generation, topic string) []kafka.PartitionAssignment {
	// kafka-go has waited for the previous generation's workers, except
	// those it started after that generation had ended; never let two
	// workers own one partition.
	m.workers.Wait()
	as := gen.Assignments[topic]
	ids := make([]int, len(as))
	for i, a := range as {
		ids[i] = a.ID
	}
	slices.Sort(ids)
	m.setAssigned(ids)
	m.ready.Store(true)
	m.log.Info("consumer group generation", "group", m.group, "generation", gen.ID, "member", gen.MemberID, "partitions", ids)
	return as
}

// join joins the group on topic and calls next for every generation until
// ctx ends; join errors are logged and retried. Then it closes the group,
// which ends the generation, waits for its workers and leaves the group,
// and returns the error of leaving.
func (m *member) join(ctx context.Context, cfg *RuntimeConfig, d *kafka.Dialer, topic string, next func(*kafka.Generation)) error {
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                    m.group,
		Brokers:               cfg.Brokers,
		Dialer:                d,
		Topics:                []string{topic},
		HeartbeatInterval:     cfg.HeartbeatInterval,
		SessionTimeout:        cfg.SessionTimeout,
		RebalanceTimeout:      cfg.RebalanceTimeout,
		JoinGroupBackoff:      cfg.JoinBackoff,
		WatchPartitionChanges: true,
		StartOffset:           cfg.startOffset(),
		Timeout:               cfg.DialTimeout,
		ErrorLogger:           kafkaLogger(m.log),
	})
	if err != nil {
		return fmt.Errorf("kafka: consumer group %s: %w", m.group, err)
	}
	for {
		gen, err := cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				break
			}
			lvl := slog.LevelWarn
			if errors.Is(err, kafka.RebalanceInProgress) {
				lvl = slog.LevelDebug
			}
			m.log.Log(ctx, lvl, "consumer group: joining failed, retrying", "group", m.group, "err", err)
			m.setAssigned(nil)
			continue
		}
		next(gen)
	}
	cerr := cg.Close()
	m.workers.Wait()
	m.ready.Store(false)
	m.setAssigned(nil)
	if cerr != nil {
		return fmt.Errorf("kafka: leave group %s: %w", m.group, cerr)
	}
	return nil
}

// result is what Run returns: the fatal error if there was one, else the
// error of leaving the group.
func (m *member) result(leave error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fatal != nil {
		return m.fatal
	}
	return leave
}
