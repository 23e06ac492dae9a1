package detector

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// partState is one partition's state on this member. A worker owns it while
// it runs; between generations the Runtime keeps it (parked) as long as the
// partition stays assigned here, so a rebalance that leaves the partition in
// place loses nothing and needs no restore. Its checkpoints go to the state
// topic (checkpoint.go).
type partState struct {
	id      int
	p       *Pipeline
	pending Batch // outputs of messages below next not yet written
	next    int64 // offset of the next message to process; -1 before the first
	windows int   // windows closed since last counted in metrics
	// windowsSince is when the oldest unwritten window record was made.
	windowsSince time.Time
	spill        *SpillFile // evicted agents; nil: eviction off
	rv           *Revoker   // the revocation policy's state for this partition
	reloads      int64      // reloads already counted in metrics
	folded       int64      // folded identity alerts already counted in metrics
	gen          int32      // the generation whose worker last ran it
	ck           ckState
}

// ckState is a partition's checkpoint bookkeeping (see checkpoint.go).
type ckState struct {
	term uint64 // this owner's term: random, drawn when the partition arrives
	seq  uint64 // the term's last completed checkpoint (its marker is written)
	full bool   // the next checkpoint writes everything (the first of a term)
	// offset of the last checkpoint written or restored; -1: none.
	offset int64
	// Written since the last completed checkpoint: agents and peer groups
	// changed, whether the pipeline's own state changed.
	agents, classes []string
	changed         bool
	// The duplicate filter in the last completed checkpoint: its
	// generation and the pieces of it and of the one before; dedupWhole:
	// the next checkpoint writes both generations whole. dedupKeys bounds
	// the pieces written of each generation (to delete them).
	dedupGen            uint64
	dedupCur, dedupPrev int
	dedupWhole          bool
	dedupKeys           map[uint64]int
	stale               []string  // keys to delete in the first checkpoint of the term
	last                time.Time // last attempt
	buf                 []byte
}

// newTerm starts a term: the next checkpoint writes everything.
func (ck *ckState) newTerm() {
	ck.term, ck.seq, ck.full = rand.Uint64(), 0, true
}

// dropped logs what is lost with a state that leaves this member, and frees
// its spill file.
func (ps *partState) dropped(log *slog.Logger) {
	if ps.spill != nil {
		ps.spill.Close()
	}
	if n := ps.pending.Len(); n > 0 {
		log.Error("partition left this member with unwritten output; it was not committed, so the partition's next owner reprocesses those messages",
			"partition", ps.id, "alerts", len(ps.pending.Alerts), "revocations", len(ps.pending.Revocations), "windows", len(ps.pending.Windows), "dead_letters", len(ps.pending.DeadLetters))
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
	unwritten int   // messages processed since the last write
	// Idle detection: seen counts messages; at each tick, if it has not
	// moved since lastSeen, the partition has been quiet since lastMsg.
	// Quiet becomes idle only when the broker confirms that nothing lies
	// beyond the reader's offset (checked at most every IdleTimeout/2, at
	// lastCheck): a consumer that cannot reach its broker, or that lags,
	// must not advance event time past events it has not read.
	seen, lastSeen     int64
	lastMsg, lastCheck time.Time
	rd                 *kafka.Reader
	tick               time.Duration // the loop's ticker period
}

func (r *Runtime) newPartState(id int) (*partState, error) {
	ps := &partState{id: id, next: -1, ck: ckState{offset: -1}}
	ps.pending.Topic, ps.pending.Partition = r.cfg.Topic, id
	rv, err := NewRevoker(r.det.Revocation, r.signer)
	if err != nil {
		return nil, err
	}
	ps.rv = rv
	p, err := NewPipeline(r.det, func(a *Alert) {
		ps.pending.Alerts = append(ps.pending.Alerts, a)
		r.m.alerts.WithLabelValues(a.Severity.String(), a.Kind).Inc()
		reqs, err := rv.Decide(a)
		if err != nil {
			// Signing cannot fail with a valid key; say so loudly if it does.
			r.log.Error("revocation request not signed; alert sent without it", "alert_id", a.AlertID, "err", err)
			r.m.revocationErrors.Inc()
			return
		}
		for _, req := range reqs {
			ps.pending.Revocations = append(ps.pending.Revocations, req)
			r.m.revocations.WithLabelValues(req.Mode, req.Why).Inc()
		}
	})
	if err != nil {
		return nil, err
	}
	p.OnWindow(func(s *WindowScore) {
		ps.windows++
		if len(ps.pending.Windows) == 0 {
			ps.windowsSince = r.now()
		}
		ps.pending.Windows = append(ps.pending.Windows, WindowRecord{})
		newWindowRecord(&ps.pending.Windows[len(ps.pending.Windows)-1], s)
	})
	p.TrackChanges()
	p.SetKeys(r.keys)
	p.SetRevoker(rv)
	p.SetInventory(r.inv)
	if r.det.EvictAfter > 0 {
		sp, err := NewSpillFile(r.det.SpillDir)
		if err != nil {
			return nil, err
		}
		p.SetStore(sp)
		ps.spill = sp
	}
	ps.p = p
	return ps, nil
}

// work is one partition's worker for one generation: it restores the
// partition's state (unless it kept it from the previous generation), reads
// the partition from there, feeds the Pipeline, writes outputs, checkpoints
// and commits, until the generation or the Runtime ends.
func (r *Runtime) work(rctx, gctx context.Context, gen *kafka.Generation, a kafka.PartitionAssignment) {
	log := r.log.With("partition", a.ID)
	if a.ID >= r.state.parts {
		r.fail(fmt.Errorf("kafka.state_topic: events partition %d has no state partition: %s has %d partitions and must have as many as %s (add partitions to it)",
			a.ID, r.cfg.StateTopic, r.state.parts, r.cfg.Topic))
		return
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

	ps := r.takeParked(a.ID, a.Offset)
	start := a.Offset
	if ps != nil {
		start = ps.next
		if ps.gen+1 != gen.ID {
			// Another member may have owned the partition in a
			// generation this one missed: start a term of our own.
			ps.ck.newTerm()
		}
	} else {
		var ok bool
		if ps, start, ok = r.restorePartition(ctx, a, log); !ok {
			return
		}
	}
	ps.gen = gen.ID
	defer r.park(ps)
	w := &worker{
		r: r, gen: gen, ps: ps, log: log,
		messages:  r.m.messages.WithLabelValues(partitionLabel(a.ID)),
		committed: max(a.Offset, -1),
		lastMsg:   r.now(),
	}
	ps.ck.last = r.now()
	if w.committed >= 0 {
		r.m.committed.WithLabelValues(partitionLabel(a.ID)).Set(float64(w.committed))
	}

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
	// Stopping: write what is pending, then checkpoint and commit. The
	// generation's connection stays open until every worker has returned.
	sctx, scancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	if w.write(sctx) {
		w.checkpoint(sctx, true)
	} else if n := ps.pending.Len(); n > 0 {
		log.Error("stopping with unwritten output; offsets are not committed past it", "sink", r.sink.Name(), "outputs", n, "committed", w.committed)
	}
	scancel()
	r.m.lag.DeleteLabelValues(partitionLabel(a.ID))
	r.m.agents.DeleteLabelValues(partitionLabel(a.ID))
	r.m.evicted.DeleteLabelValues(partitionLabel(a.ID))
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
	w.tick = max(min(cfg.CheckpointInterval, cfg.IdleTimeout/2, cfg.FlushInterval), 10*time.Millisecond)
	tick := time.NewTicker(w.tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-msgs:
			w.process(&m)
			// Write after MaxBatch messages (bounded memory while
			// backlogged), or when caught up and something is due: alerts
			// at once (low latency), window records after FlushInterval.
			if w.unwritten >= cfg.MaxBatch || len(msgs) == 0 && w.due() {
				if !w.write(ctx) {
					return
				}
			}
		case <-tick.C:
			if ctx.Err() != nil {
				return
			}
			w.idle(ctx)
			w.gauges()
			if !w.write(ctx) {
				return
			}
			w.checkpoint(ctx, false)
		}
	}
}

// due reports whether the pending outputs should be written now that the
// partition has caught up.
func (w *worker) due() bool {
	p := &w.ps.pending
	return p.urgent() || len(p.Windows) > 0 && w.r.now().Sub(w.ps.windowsSince) >= w.r.cfg.FlushInterval
}

// gauges updates the partition's lag and agents gauges (and the folded
// identity alerts counter).
func (w *worker) gauges() {
	id := partitionLabel(w.ps.id)
	if d := w.ps.p.stats.Folded - w.ps.folded; d > 0 {
		w.r.m.folded.Add(float64(d))
		w.ps.folded = w.ps.p.stats.Folded
	}
	if lag := w.rd.Lag(); lag >= 0 {
		w.r.m.lag.WithLabelValues(id).Set(float64(lag))
	}
	w.r.m.agents.WithLabelValues(id).Set(float64(len(w.ps.p.agents)))
	if w.ps.spill != nil {
		w.r.m.evicted.WithLabelValues(id).Set(float64(w.ps.spill.Len() - w.ps.p.evictedClasses))
	}
}

func (w *worker) process(m *kafka.Message) {
	ps := w.ps
	if ps.next >= 0 && m.Offset < ps.next {
		return // already processed (cannot happen with a partition reader)
	}
	// The trusted time: the broker's timestamp, never past the wall clock
	// (a producer sets CreateTime; the wall clock is vigil's own).
	trusted := w.r.now().UnixNano()
	if !m.Time.IsZero() {
		trusted = min(trusted, m.Time.UnixNano())
	}
	if err := ps.p.ProcessMessage(m.Value, m.Key, trusted); err != nil {
		reason := rejectReason(err)
		// Bounded (NewDeadLetter): the message may be as large as the
		// broker takes, and its dead letter must fit every sink, or the
		// partition would stop at it.
		d := NewDeadLetter(m.Topic, m.Partition, m.Offset, m.Key, m.Value, m.Time, reason, err.Error())
		if w.r.cfg.Topic == w.r.cfg.RepartitionTopic {
			sourceOf(&d, m.Headers)
		}
		ps.pending.DeadLetters = append(ps.pending.DeadLetters, d)
		w.r.m.deadLetters.WithLabelValues(string(reason)).Inc()
	}
	w.closedLoop()
	ps.next = m.Offset + 1
	w.seen++
	w.unwritten++
	w.messages.Inc()
}

// sourceOf points a dead letter read from the repartition topic at where
// the Repartitioner read the event (its source headers), which is where
// the producer wrote it, and gives it the size and digest of the value
// and key the producer wrote when the Repartitioner forwarded them cut.
func sourceOf(d *DeadLetter, hs []kafka.Header) {
	var topic string
	part, off := -1, int64(-1)
	var ts time.Time
	vsize, ksize := -1, -1
	var vsum, ksum [sha256.Size]byte
	var vok, kok bool
	for _, h := range hs {
		switch h.Key {
		case HeaderSourceValueSize:
			vsize = atoi(h.Value)
		case HeaderSourceValueSHA256:
			vok = unhex(vsum[:], h.Value)
		case HeaderSourceKeySize:
			ksize = atoi(h.Value)
		case HeaderSourceKeySHA256:
			kok = unhex(ksum[:], h.Value)
		case HeaderSourceTopic:
			topic = string(h.Value)
		case HeaderSourcePartition:
			if v, err := strconv.Atoi(string(h.Value)); err == nil {
				part = v
			}
		case HeaderSourceOffset:
			if v, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
				off = v
			}
		case HeaderSourceTimestamp:
			ts, _ = time.Parse(time.RFC3339Nano, string(h.Value))
		}
	}
	// Only a valid topic name can be the Repartitioner's: anything else
	// (a producer's own header) would unbound the dead letter.
	if validTopic(topic) != "" || part < 0 || off < 0 {
		return
	}
	d.Topic, d.Partition, d.Offset = topic, part, off
	if !ts.IsZero() {
		d.Time = ts
	}
	if vok && vsize > len(d.Value) {
		d.ValueSize, d.ValueSHA256 = vsize, vsum
	}
	if kok && ksize > len(d.Key) {
		d.KeyCut, d.KeySize, d.KeySHA256 = true, ksize, ksum
	}
}

// atoi parses a non-negative decimal int; -1 if b is not one.
func atoi(b []byte) int {
	v, err := strconv.Atoi(string(b))
	if err != nil || v < 0 {
		return -1
	}
	return v
}

// unhex decodes hex b into dst, reporting whether b is exactly that.
func unhex(dst, b []byte) bool {
	if len(b) != hex.EncodedLen(len(dst)) {
		return false
	}
	_, err := hex.Decode(dst, b)
	return err == nil
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
	if !w.ps.p.started {
		return // no open window
	}
	st := w.ps.p.Stats()
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

// restorePartition builds the state of a partition that arrives on this
// member from its last checkpoint, retrying failed reads until ctx ends. It
// returns the offset to consume from, and false when the worker must not
// run (ctx ended, or the state cannot be used: the Runtime then stops).
func (r *Runtime) restorePartition(ctx context.Context, a kafka.PartitionAssignment, log *slog.Logger) (*partState, int64, bool) {
	backoff := r.cfg.RetryBackoff
	for {
		ps, err := r.newPartState(a.ID)
		if err != nil {
			r.fail(fmt.Errorf("partition %d: %w", a.ID, err))
			return nil, 0, false
		}
		start, err := r.restore(ctx, ps, a.Offset, log)
		if err == nil {
			ps.ck.newTerm()
			if start >= 0 {
				ps.next = start
			}
			return ps, start, true
		}
		switch {
		case errors.Is(err, errStatePermanent):
			r.fail(err)
			return nil, 0, false
		case ctx.Err() != nil:
			return nil, 0, false
		}
		r.m.restoreFailures.Inc()
		log.Warn("state restore failed; the partition waits, retrying", "err", err, "backoff", backoff)
		if !sleep(ctx, backoff) {
			return nil, 0, false
		}
		backoff = min(2*backoff, r.cfg.MaxRetryBackoff)
	}
}

// checkpoint writes the partition's state to the state topic, then commits
// its offset: when something changed and, unless force, CheckpointInterval
// has passed since the last attempt. Call it only when every output of the
// messages below ps.next is written (write returned true). A failed
// checkpoint commits nothing and is retried at the next interval with
// everything it did not write.
func (w *worker) checkpoint(ctx context.Context, force bool) {
	ps, r := w.ps, w.r
	ck := &ps.ck
	if ps.next < 0 || ps.pending.Len() > 0 {
		return
	}
	now := r.now()
	// Half a tick of slack: checkpoints ride the ticker, and a tick that
	// comes a hair early must not push the checkpoint a whole tick later.
	if !force && now.Sub(ck.last) < r.cfg.CheckpointInterval-w.tick/2 {
		return
	}
	ck.last = now
	if ps.next == ck.offset && !ck.changed && len(ck.agents) == 0 && len(ck.classes) == 0 && !ps.p.changed &&
		len(ps.p.changedAgents) == 0 && len(ps.p.changedClasses) == 0 {
		if ck.offset > w.committed {
			w.commit(ck.offset) // a restored checkpoint ahead of the committed offset
		}
		return
	}
	// A member evicted from the group (a long pause) must not write state
	// over its successor's: make sure the generation still accepts commits.
	if w.committed >= 0 && !w.commit(w.committed) {
		return
	}
	start := time.Now()
	if err := r.checkpoint(ctx, ps); err != nil {
		r.m.ckFailures.Inc()
		if errors.Is(err, errStatePermanent) {
			r.fail(fmt.Errorf("partition %d: checkpoint: %w", ps.id, err))
			return
		}
		if ctx.Err() == nil {
			w.log.Warn("state checkpoint failed; offsets are not committed until one succeeds", "err", err, "retry_in", r.cfg.CheckpointInterval)
		}
		return
	}
	r.m.ckSeconds.Observe(time.Since(start).Seconds())
	w.commit(ps.next)
	w.evict()
}

// evict moves the partition's idle, checkpointed agents out of memory.
func (w *worker) evict() {
	ps, r := w.ps, w.r
	if ps.spill == nil || !ps.p.started {
		return
	}
	n, err := ps.p.Evict(ps.p.stats.MaxTS - int64(r.det.EvictAfter))
	if err != nil {
		w.log.Warn("evicting idle agents failed; they stay in memory", "err", err)
	}
	if n > 0 {
		r.m.evictions.Add(float64(n))
	}
	if d := ps.p.stats.Reloads - ps.reloads; d > 0 {
		r.m.reloads.Add(float64(d))
		ps.reloads = ps.p.stats.Reloads
	}
}

// commit commits offset next for the partition (the state of every message
// below it is checkpointed and its outputs are written) unless it is
// already. It reports whether the coordinator accepted it.
func (w *worker) commit(next int64) bool {
	if next < 0 || next < w.committed {
		return true
	}
	err := w.gen.CommitOffsets(map[string]map[int]int64{w.r.cfg.Topic: {w.ps.id: next}})
	if err != nil {
		// During a rebalance the coordinator refuses commits of the old
		// generation; the next owner starts from the last accepted one.
		lvl := slog.LevelWarn
		if errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.IllegalGeneration) || errors.Is(err, kafka.UnknownMemberId) {
			lvl = slog.LevelDebug
		}
		w.log.Log(context.Background(), lvl, "kafka: commit failed", "offset", next, "err", err)
		return !errors.Is(err, kafka.IllegalGeneration) && !errors.Is(err, kafka.UnknownMemberId)
	}
	w.committed = next
	w.r.m.committed.WithLabelValues(partitionLabel(w.ps.id)).Set(float64(next))
	return true
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

// closedLoop collects what the revocation policy raised while the last
// message was processed: alerts on ineffective requests or a spent
// budget, and the outcomes of enforced requests.
func (w *worker) closedLoop() {
	ps, r := w.ps, w.r
	for _, a := range ps.rv.TakeAlerts() {
		ps.pending.Alerts = append(ps.pending.Alerts, a)
		r.m.alerts.WithLabelValues(a.Severity.String(), a.Kind).Inc()
		w.log.Warn("revocation policy alert", "kind", a.Kind, "agent_id", a.AgentID, "alert_id", a.AlertID)
	}
	for _, o := range ps.rv.TakeOutcomes() {
		ps.pending.Outcomes = append(ps.pending.Outcomes, o)
		r.m.outcomes.WithLabelValues(o.Outcome).Inc()
		if o.TimeToEffect >= 0 {
			r.m.timeToEffect.Observe(o.TimeToEffect.Seconds())
		}
		w.log.Info("revocation outcome", "request_id", o.RequestID, "outcome", o.Outcome, "time_to_effect", o.TimeToEffect, "allowed_after", o.AllowedAfter)
	}
}
