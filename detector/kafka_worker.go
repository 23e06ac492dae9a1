package detector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// partState is one partition's state on this member. A worker owns it while
// it runs; between generations the Runtime keeps it (parked) as long as the
// partition stays assigned here, so a rebalance that leaves the partition in
// place loses nothing. (The state checkpoint will be taken from here.)
type partState struct {
	id      int
	p       *Pipeline
	pending Batch // outputs of messages below next not yet written
	next    int64 // offset of the next message to process; -1 before the first
	windows int   // windows closed since last counted in metrics
}

// dropped logs what is lost with a state that leaves this member.
func (ps *partState) dropped(log *slog.Logger) {
	if n := ps.pending.Len(); n > 0 {
		log.Error("partition left this member with unwritten output; it was not committed, so the partition's next owner reprocesses those messages",
			"partition", ps.id, "alerts", len(ps.pending.Alerts), "dead_letters", len(ps.pending.DeadLetters))
	}
}

// worker drives one partition during one generation.
type worker struct {
	r         *Runtime
	gen       *kafka.Generation
	ps        *partState
	log       *slog.Logger
	messages  prometheus.Counter
	committed int64 // last offset committed (or found committed); -1: none
	lastCmt   time.Time
	unwritten int // messages processed since the last write
	// Idle detection: seen counts messages; at each tick, if it has not
	// moved since lastSeen, the partition has been quiet since lastMsg.
	// Quiet becomes idle only when the broker confirms that nothing lies
	// beyond the reader's offset (checked at most every IdleTimeout/2, at
	// lastCheck): a consumer that cannot reach its broker, or that lags,
	// must not advance event time past events it has not read.
	seen, lastSeen     int64
	lastMsg, lastCheck time.Time
	rd                 *kafka.Reader
}

func (r *Runtime) newPartState(id int) (*partState, error) {
	ps := &partState{id: id, next: -1}
	ps.pending.Topic, ps.pending.Partition = r.cfg.Topic, id
	p, err := NewPipeline(r.det, func(a *Alert) {
		ps.pending.Alerts = append(ps.pending.Alerts, a)
		r.m.alerts.WithLabelValues(a.Severity.String()).Inc()
	})
	if err != nil {
		return nil, err
	}
	p.OnWindow(func(*WindowScore) { ps.windows++ })
	ps.p = p
	return ps, nil
}

// work is one partition's worker for one generation: it reads the partition
// from the assigned offset, feeds the Pipeline, writes outputs and commits,
// until the generation or the Runtime ends.
func (r *Runtime) work(rctx, gctx context.Context, gen *kafka.Generation, a kafka.PartitionAssignment) {
	log := r.log.With("partition", a.ID)
	ps := r.takeParked(a.ID, a.Offset)
	start := a.Offset
	if ps != nil {
		start = ps.next
	} else {
		var err error
		if ps, err = r.newPartState(a.ID); err != nil {
			r.fail(fmt.Errorf("partition %d: %w", a.ID, err))
			return
		}
	}
	defer r.park(ps)
	w := &worker{
		r: r, gen: gen, ps: ps, log: log,
		messages:  r.m.messages.WithLabelValues(partitionLabel(a.ID)),
		committed: max(a.Offset, -1),
		lastCmt:   r.now(),
		lastMsg:   r.now(),
	}
	if w.committed >= 0 {
		r.m.committed.WithLabelValues(partitionLabel(a.ID)).Set(float64(w.committed))
	}

	// ctx ends with the generation or the Runtime.
	ctx, cancel := context.WithCancel(rctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-gctx.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	defer func() { cancel(); <-watchDone }()

	rc := kafka.ReaderConfig{
		Brokers: r.cfg.Brokers, Topic: r.cfg.Topic, Partition: a.ID, Dialer: r.dialer,
		MinBytes: 1, MaxBytes: r.cfg.FetchMaxBytes, MaxWait: r.cfg.FetchMaxWait,
		QueueCapacity: 1024, ErrorLogger: kafkaLogger(log),
	}
	if err := rc.Validate(); err != nil {
		r.fail(fmt.Errorf("kafka: reader for partition %d: %w", a.ID, err))
		return
	}
	rd := kafka.NewReader(rc)
	defer rd.Close()
	if err := rd.SetOffset(start); err != nil {
		r.fail(fmt.Errorf("kafka: partition %d: seek to %d: %w", a.ID, start, err))
		return
	}
	log.Debug("partition worker started", "offset", start, "resumed", ps.next >= 0)

	msgs := make(chan kafka.Message, 256)
	fctx, stopFetch := context.WithCancel(context.Background())
	fetchDone := make(chan struct{})
	go w.fetch(fctx, rd, msgs, fetchDone)

	w.rd = rd
	w.loop(ctx, msgs)

	stopFetch()
	<-fetchDone
	// Stopping: write what is pending, then commit it. The generation's
	// connection stays open until every worker has returned.
	sctx, scancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	if w.write(sctx) {
		w.commit(true)
	} else if n := ps.pending.Len(); n > 0 {
		log.Error("stopping with unwritten output; offsets are not committed past it", "sink", r.sink.Name(), "outputs", n, "committed", w.committed)
	}
	scancel()
	log.Debug("partition worker stopped", "next", ps.next, "committed", w.committed)
}

// fetch reads messages from rd into msgs until ctx ends. It runs beside the
// worker so that the worker can also wake on its ticker.
func (w *worker) fetch(ctx context.Context, rd *kafka.Reader, msgs chan<- kafka.Message, done chan<- struct{}) {
	defer close(done)
	backoff := w.r.cfg.RetryBackoff
	for {
		m, err := rd.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.log.Warn("kafka: fetch failed, retrying", "err", err, "backoff", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, w.r.cfg.MaxRetryBackoff)
			continue
		}
		backoff = w.r.cfg.RetryBackoff
		select {
		case msgs <- m:
		case <-ctx.Done():
			return
		}
	}
}

// loop processes messages until ctx ends or writing fails permanently.
func (w *worker) loop(ctx context.Context, msgs <-chan kafka.Message) {
	cfg := &w.r.cfg
	tick := time.NewTicker(max(min(cfg.CommitInterval, cfg.IdleTimeout/2), 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-msgs:
			w.process(&m)
			// Write when caught up (low latency) or after MaxBatch
			// messages (bounded memory while backlogged).
			if len(msgs) == 0 || w.unwritten >= cfg.MaxBatch {
				if !w.write(ctx) {
					return
				}
			}
		case <-tick.C:
			w.idle(ctx)
			if !w.write(ctx) {
				return
			}
			w.commit(false)
		}
	}
}

func (w *worker) process(m *kafka.Message) {
	ps := w.ps
	if ps.next >= 0 && m.Offset < ps.next {
		return // already processed (cannot happen with a partition reader)
	}
	if err := ps.p.Process(m.Value); err != nil {
		reason := rejectReason(err)
		ps.pending.DeadLetters = append(ps.pending.DeadLetters, DeadLetter{
			Topic: m.Topic, Partition: m.Partition, Offset: m.Offset,
			Key: bytes.Clone(m.Key), Value: bytes.Clone(m.Value), Time: m.Time,
			Reason: reason, Detail: err.Error(),
		})
		w.r.m.deadLetters.WithLabelValues(string(reason)).Inc()
	}
	ps.next = m.Offset + 1
	w.seen++
	w.unwritten++
	w.messages.Inc()
}

// idle advances the event-time clock of an idle partition (see worker): by
// the wall-clock time from its last message to the broker's confirmation,
// from the newest event time seen. Open windows then close as they would
// have if events had kept arriving.
func (w *worker) idle(ctx context.Context) {
	now := w.r.now()
	if w.seen != w.lastSeen {
		w.lastSeen, w.lastMsg = w.seen, now
		return
	}
	idle := w.r.cfg.IdleTimeout
	if now.Sub(w.lastMsg) < idle || now.Sub(w.lastCheck) < idle/2 {
		return
	}
	w.lastCheck = now
	st := w.ps.p.Stats()
	if st.Events == 0 {
		return // no open window
	}
	lctx, cancel := context.WithTimeout(ctx, min(w.r.cfg.DialTimeout, idle))
	lag, err := w.rd.ReadLag(lctx)
	cancel()
	if err != nil || lag > 0 {
		w.log.Debug("quiet partition not confirmed idle", "lag", lag, "err", err)
		return
	}
	w.ps.p.AdvanceTo(st.MaxTS + int64(now.Sub(w.lastMsg)))
}

// write hands the pending outputs to the sink, retrying failures with capped
// exponential backoff until they succeed or ctx ends. It reports whether
// nothing is pending any more.
func (w *worker) write(ctx context.Context) bool {
	ps, r := w.ps, w.r
	if ps.windows > 0 {
		r.m.windows.Add(float64(ps.windows))
		ps.windows = 0
	}
	if ps.pending.Len() == 0 {
		w.unwritten = 0
		return true
	}
	backoff := r.cfg.RetryBackoff
	for attempt := 1; ; attempt++ {
		err := r.sink.Write(ctx, ps.pending)
		if err == nil {
			if attempt > 1 {
				w.log.Info("sink recovered", "sink", r.sink.Name(), "attempts", attempt)
			}
			ps.pending.reset()
			w.unwritten = 0
			return true
		}
		if errors.Is(err, ErrPermanent) {
			r.fail(fmt.Errorf("sink %s: partition %d: %w", r.sink.Name(), ps.id, err))
			return false
		}
		r.m.sinkFailures.Inc()
		if ctx.Err() != nil {
			return false
		}
		if attempt == 1 || attempt%10 == 0 {
			w.log.Warn("sink write failed; partition blocked, retrying", "sink", r.sink.Name(), "attempt", attempt, "backoff", backoff, "err", err)
		}
		// Full jitter on the upper half keeps workers from retrying in step.
		if !sleep(ctx, backoff/2+rand.N(backoff/2+1)) {
			return false
		}
		backoff = min(2*backoff, r.cfg.MaxRetryBackoff)
	}
}

// commit commits the partition's next offset when every output below it is
// written: only after write returned true. Unless force, at most once per
// CommitInterval.
func (w *worker) commit(force bool) {
	next := w.ps.next
	if next < 0 || next <= w.committed || w.ps.pending.Len() > 0 {
		return
	}
	now := w.r.now()
	if !force && now.Sub(w.lastCmt) < w.r.cfg.CommitInterval {
		return
	}
	w.lastCmt = now
	err := w.gen.CommitOffsets(map[string]map[int]int64{w.r.cfg.Topic: {w.ps.id: next}})
	if err != nil {
		// During a rebalance the coordinator refuses commits of the old
		// generation; the next owner starts from the last accepted one.
		lvl := slog.LevelWarn
		if errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.IllegalGeneration) || errors.Is(err, kafka.UnknownMemberId) {
			lvl = slog.LevelDebug
		}
		w.log.Log(context.Background(), lvl, "kafka: commit failed", "offset", next, "err", err)
		return
	}
	w.committed = next
	w.r.m.committed.WithLabelValues(partitionLabel(w.ps.id)).Set(float64(next))
}

// sleep waits d or until ctx ends; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
