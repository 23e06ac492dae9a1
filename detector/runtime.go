package detector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/features"
)

// ReasonInvalid is the reason of a rejection that carries no decoder reason.
const ReasonInvalid features.Reason = "invalid"

// rejectReason classifies an error returned by Pipeline.Process.
func rejectReason(err error) features.Reason {
	if errors.Is(err, ErrLate) {
		return ReasonLate
	}
	if errors.Is(err, ErrFuture) {
		return ReasonFuture
	}
	if errors.Is(err, ErrKeyMismatch) {
		return ReasonKeyMismatch
	}
	if errors.Is(err, ErrIdentityLimit) {
		return ReasonIdentityLimit
	}
	var fe *features.FieldError
	if errors.As(err, &fe) && fe.Reason != "" {
		return fe.Reason
	}
	return ReasonInvalid
}

// AdvanceTo moves the watermark as if an event at time ts (Unix ns) had
// arrived, closing every window that ends at or before ts minus the allowed
// lateness, without changing the newest event time seen. The Runtime calls it
// when a partition is idle, so open windows close without new events. It is a
// no-op before the first event and when ts is not ahead of the watermark.
// Events arriving later for the closed windows are late.
func (p *Pipeline) AdvanceTo(ts int64) {
	if p.started {
		p.advance(ts)
	}
}

// Runtime consumes the events topic as one member of a Kafka consumer group
// (kafka-go's ConsumerGroup) and runs one Pipeline per assigned partition,
// each owned by one worker goroutine, which writes the partition's alerts and
// dead letters to the Sink and commits the partition's offset.
//
// Delivery is at least once: a worker commits offset N+1 only after every
// output produced from messages up to N has been written and the
// partition's state after message N is checkpointed to the state topic
// (every CheckpointInterval, and when the partition leaves). A failing Sink
// blocks its worker (backpressure) and is retried; nothing is dropped. When a
// generation ends (rebalance) or Run's context ends, workers stop reading,
// write what they hold (for at most ShutdownTimeout), checkpoint, commit and
// return. A partition that stays with this member across a rebalance keeps
// its Pipeline (baselines, open windows); one that arrives restores its
// agents, peer groups and watermark from its last checkpoint before it
// consumes, and continues from the checkpoint's offset. See checkpoint.go
// for the protocol and why a crash at any point loses nothing.
type Runtime struct {
	cfg    RuntimeConfig
	det    Config
	sink   Sink
	log    *slog.Logger
	dialer *kafka.Dialer
	m      *runtimeMetrics
	now    func() time.Time // wall clock; tests move it
	// dial, when set, makes every connection to the brokers (tests cut
	// them to emulate a crash).
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	state  *stateStore // set by Run
	signer *Signer     // signs revocation requests (SetSigner)
	keys   *Keys       // emitters' keyring (det.Signatures), reloaded by Run
	inv    *Inventory  // agent inventory (det.Inventory), reloaded by Run

	member                    // the consumer group membership; mu also guards parked
	parked map[int]*partState // between generations: partitions last held here
}

// NewRuntime checks both configurations and builds the Kafka dialer (reading
// TLS files and the SASL password). Metrics are registered with reg (nil:
// not registered); log may be nil (no logging). Call Run to start.
func NewRuntime(cfg RuntimeConfig, det Config, sink Sink, reg prometheus.Registerer, log *slog.Logger) (*Runtime, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := det.Validate(); err != nil {
		return nil, err
	}
	if sink == nil {
		return nil, errors.New("runtime: a sink is required")
	}
	d, err := cfg.Dialer()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var keys *Keys
	if det.Signatures.Mode != SigOff {
		if keys, err = LoadKeys(det.Signatures.Keyring); err != nil {
			return nil, err
		}
	}
	var inv *Inventory
	if det.Inventory.File != "" {
		if inv, err = LoadInventory(det.Inventory.File); err != nil {
			return nil, err
		}
	}
	m := newRuntimeMetrics(reg)
	return &Runtime{
		cfg: cfg, det: det, sink: sink, log: log, dialer: d, m: m,
		now:    time.Now,
		member: member{group: cfg.Group, log: log, gauge: m.assigned},
		parked: make(map[int]*partState),
		keys:   keys,
		inv:    inv,
	}, nil
}

// SetSigner sets the key that signs revocation requests; required when the
// revocation policy is enabled. Call before Run.
func (r *Runtime) SetSigner(s *Signer) { r.signer = s }

// Run checks the state topic (creating it if it does not exist), joins the
// group and consumes until ctx ends, then lets every worker write its output,
// checkpoint and commit, leaves the group and returns nil. It returns an
// error only if the group or the state topic cannot be set up (the state
// topic must have as many partitions as the events topic), the state cannot
// be used (among others: it holds another consumer group's or events topic's
// checkpoints), or a Sink fails permanently. Join and connection errors are
// logged and retried. Run may be called once.
func (r *Runtime) Run(ctx context.Context) error {
	if _, err := NewRevoker(r.det.Revocation, r.signer); err != nil {
		return err
	}
	ctx, cancel := r.start(ctx)
	defer cancel(nil)
	if r.dial != nil {
		r.dialer.DialFunc = r.dial
	}
	tr := &kafka.Transport{
		Dial: r.dial, DialTimeout: r.cfg.DialTimeout, ClientID: r.cfg.ClientID,
		TLS: r.dialer.TLS, SASL: r.dialer.SASLMechanism,
	}
	defer tr.CloseIdleConnections()
	r.state = &stateStore{
		topic: r.cfg.StateTopic, events: r.cfg.Topic,
		cl: &kafka.Client{Addr: kafka.TCP(r.cfg.Brokers...), Transport: tr},
	}
	if err := r.state.prepare(ctx, r.log, r.cfg.JoinBackoff); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if r.keys != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			r.reload(ctx, "keyring", r.det.Signatures.ReloadInterval, r.keys.Reload, r.keys.Ring().Len)
		}()
	}
	if r.inv != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			r.reload(ctx, "inventory", r.det.Inventory.ReloadInterval, r.inv.Reload, r.inv.Len)
		}()
	}
	r.log.Info("joining consumer group", "group", r.cfg.Group, "topic", r.cfg.Topic, "brokers", r.cfg.Brokers)
	// Leaving ends the generation and waits for its workers, which write
	// their output, checkpoint and commit.
	leave := r.join(ctx, &r.cfg, r.dialer, r.cfg.Topic, func(gen *kafka.Generation) { r.startGeneration(ctx, gen) })
	r.mu.Lock()
	for id, ps := range r.parked {
		ps.dropped(r.log)
		delete(r.parked, id)
	}
	r.mu.Unlock()
	return r.result(leave)
}

// startGeneration starts one worker per partition of the topic assigned to
// this member. Every worker of the previous generation has returned (kafka-go
// waits for them before it delivers the next generation).
func (r *Runtime) startGeneration(ctx context.Context, gen *kafka.Generation) {
	as := r.generation(gen, r.cfg.Topic)
	r.mu.Lock()
	for id, ps := range r.parked {
		if !slices.ContainsFunc(as, func(a kafka.PartitionAssignment) bool { return a.ID == id }) {
			ps.dropped(r.log)
			delete(r.parked, id)
		}
	}
	r.mu.Unlock()
	r.m.generations.Inc()
	for _, a := range as {
		r.workers.Add(1)
		gen.Start(func(gctx context.Context) {
			defer r.workers.Done()
			r.work(ctx, gctx, gen, a)
		})
	}
}

// takeParked returns the state this member kept for partition id if it can
// continue from it, given the offset committed for the partition. (Nothing
// needs restoring then: the Pipeline is the partition's state.)
func (r *Runtime) takeParked(id int, committed int64) *partState {
	r.mu.Lock()
	defer r.mu.Unlock()
	ps := r.parked[id]
	delete(r.parked, id)
	if ps == nil || ps.next < 0 {
		return nil
	}
	// Everything below ps.next went through this Pipeline and its output is
	// written or still pending in ps; the committed offset can only be
	// behind. Ahead means someone moved the offset: start over there.
	if committed >= 0 && committed > ps.next {
		ps.dropped(r.log)
		return nil
	}
	return ps
}

func (r *Runtime) park(ps *partState) {
	r.mu.Lock()
	r.parked[ps.id] = ps
	r.mu.Unlock()
}

// runtimeMetrics are the Runtime's Prometheus metrics.
type runtimeMetrics struct {
	messages         *prometheus.CounterVec
	deadLetters      *prometheus.CounterVec
	alerts           *prometheus.CounterVec
	revocations      *prometheus.CounterVec
	revocationErrors prometheus.Counter
	windows          prometheus.Counter
	sinkFailures     prometheus.Counter
	committed        *prometheus.GaugeVec
	lag              *prometheus.GaugeVec
	agents           *prometheus.GaugeVec
	evicted          *prometheus.GaugeVec
	evictions        prometheus.Counter
	reloads          prometheus.Counter
	folded           prometheus.Counter
	outcomes         *prometheus.CounterVec
	timeToEffect     prometheus.Histogram
	fileReloads      *prometheus.CounterVec
	assigned         prometheus.Gauge
	generations      prometheus.Counter

	ckSeconds         prometheus.Histogram
	ckRecords         prometheus.Counter
	ckBytes           prometheus.Counter
	ckFailures        prometheus.Counter
	restoreSeconds    prometheus.Histogram
	restoreFailures   prometheus.Counter
	restoreIncomplete prometheus.Counter
}

func newRuntimeMetrics(reg prometheus.Registerer) *runtimeMetrics {
	f := promauto.With(reg)
	return &runtimeMetrics{
		messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_consumer_messages_total", Help: "Messages read from the events topic, by partition.",
		}, []string{"partition"}),
		deadLetters: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_consumer_dead_letters_total", Help: "Messages rejected (not scored), by reason.",
		}, []string{"reason"}),
		alerts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_detector_alerts_total", Help: "Alerts produced, by severity and kind.",
		}, []string{"severity", "kind"}),
		revocations: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_detector_revocations_total", Help: "Revocation requests produced, by mode (enforce, dry_run) and why that mode (policy, unverified, cold, budget).",
		}, []string{"mode", "why"}),
		revocationErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_detector_revocation_errors_total", Help: "Revocation requests that could not be signed (the alert is still sent).",
		}),
		lag: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_consumer_lag_messages", Help: "Messages between this member's position and the end of the partition, by partition.",
		}, []string{"partition"}),
		agents: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_detector_agents", Help: "Agents held in memory, by partition.",
		}, []string{"partition"}),
		evicted: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_detector_agents_evicted", Help: "Idle agents moved out of memory to the partition's spill file, by partition.",
		}, []string{"partition"}),
		evictions: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_detector_agent_evictions_total", Help: "Idle agents moved out of memory.",
		}),
		outcomes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_revocation_outcomes_total", Help: "Enforced revocation requests settled by what followed them, by outcome (effective, ineffective).",
		}, []string{"outcome"}),
		timeToEffect: f.NewHistogram(prometheus.HistogramOpts{
			Name: "vigil_revocation_time_to_effect_seconds", Help: "From an enforced request to the last allowed use of what it revoked (event time), for effective requests.",
			Buckets: []float64{0, 1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600},
		}),
		folded: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_detector_identity_alerts_folded_total",
			Help: "Alerts on identities without a baseline of their own (and refused new identities) folded into an hour's identity_flood alert.",
		}),
		fileReloads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_config_file_reloads_total", Help: "Reloads of the emitters' keyring and the agent inventory after their files changed, by file and result (ok, error).",
		}, []string{"file", "result"}),
		reloads: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_detector_agent_reloads_total", Help: "Evicted agents brought back into memory by their next event.",
		}),
		windows: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_detector_windows_closed_total", Help: "Agent windows closed and scored.",
		}),
		sinkFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_output_write_failures_total", Help: "Failed writes of a partition's outputs to the sink (each is retried).",
		}),
		committed: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_consumer_committed_offset", Help: "Last offset committed, by partition.",
		}, []string{"partition"}),
		assigned: f.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_consumer_assigned_partitions", Help: "Partitions this member holds.",
		}),
		generations: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_consumer_generations_total", Help: "Consumer group generations joined (rebalances).",
		}),
		ckSeconds: f.NewHistogram(prometheus.HistogramOpts{
			Name: "vigil_state_checkpoint_duration_seconds", Help: "Time to write one partition's checkpoint to the state topic.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}),
		ckRecords: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_state_checkpoint_records_total", Help: "Records written to the state topic (agents, peer groups, pipeline state, markers).",
		}),
		ckBytes: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_state_checkpoint_bytes_total", Help: "Key and value bytes written to the state topic.",
		}),
		ckFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_state_checkpoint_failures_total", Help: "Checkpoints that failed (offsets are not committed until one succeeds).",
		}),
		restoreSeconds: f.NewHistogram(prometheus.HistogramOpts{
			Name: "vigil_state_restore_duration_seconds", Help: "Time to restore one partition's state when it is assigned here.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}),
		restoreFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_state_restore_failures_total", Help: "Failed reads of the state topic while restoring (retried; the partition waits).",
		}),
		restoreIncomplete: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_state_restore_incomplete_total", Help: "Restores that found less state than the checkpoint's marker names (those agents start cold).",
		}),
	}
}

func partitionLabel(id int) string { return strconv.Itoa(id) }

// kafkaLogger adapts kafka-go's printf logger to slog (at warning level: it
// is only given the error logger).
func kafkaLogger(log *slog.Logger) kafka.Logger {
	return kafka.LoggerFunc(func(format string, args ...any) {
		log.Warn(fmt.Sprintf(format, args...), "component", "kafka-go")
	})
}

// reload rereads a file vigil trusts (the emitters' keyring, the
// inventory) when it changes, every interval, until ctx ends: keys rotate
// and agents come and go without a restart. A file that fails to load
// leaves the one in use.
func (r *Runtime) reload(ctx context.Context, what string, interval time.Duration, reload func() (bool, error), size func() int) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := reload()
		switch {
		case err != nil:
			r.m.fileReloads.WithLabelValues(what, "error").Inc()
			r.log.Error(what+" not reloaded; the one in use stays", "err", err)
		case changed:
			r.m.fileReloads.WithLabelValues(what, "ok").Inc()
			r.log.Info(what+" reloaded", "entries", size())
		}
	}
}
