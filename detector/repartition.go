package detector

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/features"
)

// Headers the Repartitioner adds to every message it forwards (after the
// message's own headers, which it keeps): where the message was read.
const (
	HeaderSourceTopic     = "source_topic"
	HeaderSourcePartition = "source_partition"
	HeaderSourceOffset    = "source_offset"
	// HeaderSourceTimestamp is the message's timestamp in the source topic
	// (RFC 3339), when it has one. The forwarded message is stamped when
	// it is written, so that the internal topic's retention counts from
	// then: a backlog older than the retention is not deleted on arrival.
	HeaderSourceTimestamp = "source_timestamp"
	// HeaderSourceValueSize and HeaderSourceValueSHA256 are the size and
	// SHA-256 (hex) of a message's whole value when the Repartitioner
	// forwards it cut (a value longer than features.MaxEventSize, which the
	// detector rejects for its size whatever follows); HeaderSourceKeySize
	// and HeaderSourceKeySHA256, of its whole key when it forwards an
	// invalid message's key cut (longer than MaxDeadLetterKey). The
	// Runtime puts them in the message's dead letter.
	HeaderSourceValueSize   = "source_value_size"
	HeaderSourceValueSHA256 = "source_value_sha256"
	HeaderSourceKeySize     = "source_key_size"
	HeaderSourceKeySHA256   = "source_key_sha256"
)

// Bounds of a forwarded message (forwarder.add). Everything in a message is
// its producer's, its size included (up to the events topic's
// max.message.bytes), and its copy, with the source headers added, must fit
// the internal topic whatever it is, or the Repartitioner could not forward
// it and would stop at it. With these bounds a forwarded message takes under
// 150 KiB: an agent_id key or an invalid message's cut key, a value of at
// most MaxEventSize+1 bytes, 16 KiB of the producer's headers, and ours.
const (
	// forwardMaxValue: a longer value is rejected for its size
	// (features.ReasonTooLarge) whatever it holds, and so is its first
	// forwardMaxValue bytes.
	forwardMaxValue = features.MaxEventSize + 1
	// forwardMaxKey bounds the original key of an invalid message (a valid
	// event's key is its agent_id, no longer than the event).
	forwardMaxKey = MaxDeadLetterKey
	// forwardMaxHeaders bounds the producer's headers kept (names and
	// values, in order); the rest are dropped. Headers named as the
	// Repartitioner's own (HeaderSource*) are always dropped.
	forwardMaxHeaders = 16 << 10
)

// sourceHeader reports whether k names a header the Repartitioner adds.
func sourceHeader(k string) bool {
	switch k {
	case HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset, HeaderSourceTimestamp,
		HeaderSourceValueSize, HeaderSourceValueSHA256, HeaderSourceKeySize, HeaderSourceKeySHA256:
		return true
	}
	return false
}

// RepartitionGroupSuffix is appended to RuntimeConfig.Group to name the
// Repartitioner's consumer group.
const RepartitionGroupSuffix = "-repartition"

const (
	// repartitionLinger is how long a partly filled produce batch waits for
	// the batches of other source partitions (kafka-go BatchTimeout).
	repartitionLinger = time.Millisecond
	// repartitionBatchBytes bounds one produce request per partition, and
	// so one message: Kafka's default max.message.bytes is about 1 MiB.
	repartitionBatchBytes = 1 << 20
	// repartitionWriteTimeout bounds one produce request.
	repartitionWriteTimeout = 10 * time.Second
	// repartitionAttempts is how often kafka-go sends a batch (on errors the
	// broker calls retriable) before the forwarder sees the error and
	// retries with its own capped backoff.
	repartitionAttempts = 3
)

// RepartitionedConfig returns the configuration of the Runtime that
// consumes what a Repartitioner built from c writes: Topic is
// RepartitionTopic, and Repartition is off (that Runtime reads the internal
// topic as it is).
func (c RuntimeConfig) RepartitionedConfig() RuntimeConfig {
	c.Topic, c.Repartition = c.RepartitionTopic, false
	return c
}

// Repartitioner re-keys the events topic by agent_id, for producers that do
// not key their events by it: it copies every message of RuntimeConfig.Topic
// to RepartitionTopic, keyed by the event's agent_id, so that a Runtime
// consuming RepartitionTopic (RepartitionedConfig) sees each agent's events
// in one partition. It is a member of its own consumer group (Group +
// "-repartition") on the events topic; in each generation one goroutine per
// assigned partition reads it and one goroutine merges what they read,
// produces and commits.
//
// A forwarded message keeps its value and headers; the Repartitioner adds
// the source_topic, source_partition, source_offset (and source_timestamp)
// headers. The key is the agent_id the detector's decoder finds in the
// value. A message that does not decode as a valid event keeps its original
// key (a message without a key goes to a random partition): the Runtime
// rejects it with the decoder's reason and dead-letters it. Nothing is
// dropped. Every forwarded message is bounded, whatever its producer made
// of it (forwardMaxValue and the other bounds): a value longer than
// features.MaxEventSize is forwarded cut to one byte more (the detector
// rejects it for its size all the same), an invalid message's key longer
// than 1 KiB is cut to 1 KiB, both with the whole one's size and SHA-256 in
// headers (HeaderSourceValueSize, ...) that the Runtime puts in the dead
// letter; the producer's headers are kept up to 16 KiB, and none named as
// the Repartitioner's own.
//
// Partitions are chosen as the Kafka sinks choose them (kafka.CRC32Balancer:
// CRC32 of the key modulo the partition count, as librdkafka's default
// partitioner), and messages are produced with acks=all in synchronous
// batches of up to MaxBatch. The source offset past a message is committed
// only after the message is acknowledged (every CheckpointInterval, and when
// the partitions leave this member): at least once. A member that crashes
// before it commits makes the next owner forward those messages again, and
// the Runtime's duplicate filter (event_id) drops the copies. A failing
// produce blocks the member's partitions and is retried with capped
// exponential backoff (RetryBackoff to MaxRetryBackoff), never skipped; a
// produce the brokers refuse for good (authorization, a message larger than
// 1 MiB, which forwarding's bounds rule out) stops Run with an error.
//
// Event time: an agent whose events are spread over several source
// partitions has them interleaved in the internal topic, and the detector
// counts an event later than its agent's newest one by more than the
// allowed lateness as late (dead-lettered, not scored). So the source
// partitions a member holds are merged by event time: each batch takes the
// event of earliest ts among the partitions' next messages, and waits for a
// partition that has nothing read but messages waiting at the broker (for
// at most 2·FetchMaxWait, so that a stuck partition cannot hold the others
// back for long). Each source partition's own order is kept. Invalid
// messages, which have no event time, go first. What the merge cannot
// align: members (several vigil instances) forward their partitions
// independently, so while they catch up on a backlog one member's events can
// run ahead of another's by more than the allowed lateness; and a source
// partition that is itself out of order, or whose producer lags, stays so.
// Live, when every member keeps up, the skew is about one fetch, well within
// the default allowed lateness (1m). Producers that key by agent_id avoid
// all of it; otherwise raise detector.allowed_lateness to the skew a backlog
// can build up, or run one instance while a large backlog drains.
type Repartitioner struct {
	cfg RuntimeConfig
	log *slog.Logger
	d   *kafka.Dialer
	m   *repartitionMetrics
	w   *kafka.Writer // set by Run

	prepared chan struct{} // closed once the internal topic exists
	member                 // the consumer group membership
}

// NewRepartitioner checks cfg (its repartition_* fields as if Repartition
// were on) and builds the Kafka dialer (reading TLS files and the SASL
// password). Metrics are registered with reg (nil: not registered); log may
// be nil (no logging). Call Run to start.
func NewRepartitioner(cfg RuntimeConfig, reg prometheus.Registerer, log *slog.Logger) (*Repartitioner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.validateRepartition(true); err != nil {
		return nil, err
	}
	d, err := cfg.Dialer()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "repartitioner")
	m := newRepartitionMetrics(reg)
	return &Repartitioner{
		cfg: cfg, d: d, log: log, m: m,
		prepared: make(chan struct{}),
		member:   member{group: cfg.Group + RepartitionGroupSuffix, log: log, gauge: m.assigned},
	}, nil
}

// Group returns the Repartitioner's consumer group.
func (r *Repartitioner) Group() string { return r.group }

// Prepared returns a channel that is closed once Run has found or created
// the internal topic. Start a Runtime on it after that, or its first look
// may not find the topic (kafka-go caches metadata) and it waits longer.
func (r *Repartitioner) Prepared() <-chan struct{} { return r.prepared }

// Run creates the internal topic if it does not exist (waiting, logging,
// while the events topic does not exist), joins the group and forwards
// until ctx ends. Then it finishes the batch it is producing (for at most
// ShutdownTimeout), commits what has been acknowledged, leaves the group and
// returns nil. It returns an error only if the internal
// topic cannot be set up or the brokers refuse a produce for good. Join,
// fetch, produce and connection errors are logged and retried. Run may be
// called once.
func (r *Repartitioner) Run(ctx context.Context) error {
	ctx, cancel := r.start(ctx)
	defer cancel(nil)
	// kafka-go answers metadata requests from a cache it refreshes every
	// MetadataTTL: looking for topics, refresh it at every look.
	ptr := &kafka.Transport{
		DialTimeout: r.cfg.DialTimeout, ClientID: r.cfg.ClientID,
		TLS: r.d.TLS, SASL: r.d.SASLMechanism, MetadataTTL: r.cfg.JoinBackoff,
	}
	err := r.prepare(ctx, &kafka.Client{Addr: kafka.TCP(r.cfg.Brokers...), Transport: ptr, Timeout: stateRequestTimeout})
	ptr.CloseIdleConnections()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	close(r.prepared)
	tr := &kafka.Transport{
		DialTimeout: r.cfg.DialTimeout, ClientID: r.cfg.ClientID,
		TLS: r.d.TLS, SASL: r.d.SASLMechanism,
	}
	defer tr.CloseIdleConnections()
	r.w = &kafka.Writer{
		Addr:  kafka.TCP(r.cfg.Brokers...),
		Topic: r.cfg.RepartitionTopic,
		// As the Kafka sinks: a key's partition is the CRC32 of the key
		// modulo the partition count.
		Balancer:        kafka.CRC32Balancer{},
		MaxAttempts:     repartitionAttempts,
		WriteBackoffMin: r.cfg.RetryBackoff,
		WriteBackoffMax: min(r.cfg.MaxRetryBackoff, time.Second),
		BatchSize:       r.cfg.MaxBatch,
		BatchBytes:      repartitionBatchBytes,
		BatchTimeout:    repartitionLinger,
		WriteTimeout:    repartitionWriteTimeout,
		ReadTimeout:     repartitionWriteTimeout,
		RequiredAcks:    kafka.RequireAll,
		Transport:       tr,
	}
	defer r.w.Close()
	r.log.Info("joining consumer group", "group", r.group, "from", r.cfg.Topic, "to", r.cfg.RepartitionTopic)
	// Leaving ends the generation and waits for its workers, which finish
	// producing and commit.
	return r.result(r.join(ctx, &r.cfg, r.d, r.cfg.Topic, func(gen *kafka.Generation) { r.startGeneration(ctx, gen) }))
}

func (r *Repartitioner) startGeneration(ctx context.Context, gen *kafka.Generation) {
	as := r.generation(gen, r.cfg.Topic)
	if len(as) == 0 {
		return
	}
	r.workers.Add(1)
	gen.Start(func(gctx context.Context) {
		defer r.workers.Done()
		r.forward(ctx, gctx, gen, as)
	})
}

// prepare finds the events topic and creates the internal topic if it does
// not exist.
func (r *Repartitioner) prepare(ctx context.Context, cl *kafka.Client) error {
	src, dst := r.cfg.Topic, r.cfg.RepartitionTopic
	for created := false; ; {
		md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{src, dst}})
		events, internal := -1, -1
		if err == nil {
			for _, t := range md.Topics {
				switch {
				case t.Error != nil || len(t.Partitions) == 0:
					if t.Name == dst && errors.Is(t.Error, kafka.TopicAuthorizationFailed) {
						return fmt.Errorf("kafka.repartition_topic: %s: not authorized to describe it (grant vigil's principal DESCRIBE, READ and WRITE on it): %w", dst, t.Error)
					}
				case t.Name == src:
					events = len(t.Partitions)
				case t.Name == dst:
					internal = len(t.Partitions)
				}
			}
		}
		switch {
		case err != nil || events < 0:
			if err == nil {
				err = errors.New("no such topic")
			}
			r.log.Warn("kafka: events topic not available yet, retrying", "topic", src, "err", err)
		case internal > 0:
			if created {
				r.log.Info("created the repartition topic", "topic", dst, "partitions", internal)
			} else if n := r.cfg.RepartitionPartitions; n > 0 && n != internal {
				r.log.Warn("the repartition topic exists with another partition count than kafka.repartition_partitions; using it as it is",
					"topic", dst, "partitions", internal, "configured", n)
			}
			r.m.partitions.Set(float64(internal))
			return nil
		case !created:
			parts := r.cfg.RepartitionPartitions
			if parts == 0 {
				parts = events
			}
			rf := -1
			if r.cfg.RepartitionReplicationFactor > 0 {
				rf = r.cfg.RepartitionReplicationFactor
			}
			resp, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
				Topic: dst, NumPartitions: parts, ReplicationFactor: rf,
			}}})
			if err == nil {
				err = resp.Errors[dst]
			}
			if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("kafka.repartition_topic: %s does not exist and creating it failed (create it with %d partitions, or let vigil's principal CREATE it): %w", dst, parts, err)
			}
			created = true
			continue // look again at once
		}
		// Waiting for the events topic, or for the created topic to be
		// served.
		if !sleep(ctx, r.cfg.JoinBackoff) {
			return ctx.Err()
		}
	}
}

// forwarder forwards the source partitions this member holds in one
// generation: one fetching goroutine per partition, and the forwarder's
// goroutine, which merges them by event time into produce batches and
// commits.
type forwarder struct {
	r     *Repartitioner
	gen   *kafka.Generation
	parts []*rpart
	// notify wakes the forwarder when a fetcher has delivered something.
	notify     chan struct{}
	topic      []byte // HeaderSourceTopic's value
	lastCommit time.Time
	keyed      prometheus.Counter
	unkeyed    prometheus.Counter
	cut        prometheus.Counter
	// The batch being built: the messages out and, for each, its source.
	out  []kafka.Message
	from []*rpart
	offs []int64
	// nkeyed counts the batch's messages keyed by agent_id; ncut, those
	// forwarded cut (add).
	nkeyed, ncut int
	hdrs         []kafka.Header
	buf          []byte
}

// rpart is one source partition of a forwarder.
type rpart struct {
	id    int
	label string
	part  []byte // HeaderSourcePartition's value
	rd    *kafka.Reader
	ch    chan ritem
	dec   features.Decoder // the head's views point into it
	ev    features.Event
	has   bool  // head is a message
	head  ritem // the next message, decoded into ev
	ts    int64 // the head's event time; math.MinInt64 when it is invalid
	valid bool  // the head is a valid event (keyed by ev.AgentID)
	// more: the last fetch said more messages were waiting at the broker;
	// waiting: since when the forwarder waits for the next of them (zero:
	// not waiting).
	more      bool
	waiting   time.Time
	produced  int64 // offset after the last acknowledged message; -1: none yet
	committed int64 // last offset committed (or found committed); -1: none
}

// ritem is what a fetcher delivers: a message and the lag the reader
// reported after it, or (status) only the lag.
type ritem struct {
	m      kafka.Message
	lag    int64
	status bool
}

// alignWait bounds how long the forwarder holds the other partitions back
// for one that has messages waiting at the broker but has delivered none.
func (r *Repartitioner) alignWait() time.Duration {
	return max(2*r.cfg.FetchMaxWait, 100*time.Millisecond)
}

// forward runs the generation's forwarder until the generation or Run
// ends, then finishes the batch in flight and commits.
func (r *Repartitioner) forward(rctx, gctx context.Context, gen *kafka.Generation, as []kafka.PartitionAssignment) {
	// ctx ends with the generation or Run.
	ctx, cancel := context.WithCancel(rctx)
	stopWatch := context.AfterFunc(gctx, cancel)
	defer func() { stopWatch(); cancel() }()
	// pctx is for producing: it outlives ctx by ShutdownTimeout, so that
	// the batch in flight can still be acknowledged and committed.
	pctx, pcancel := graceContext(ctx, r.cfg.ShutdownTimeout)
	defer pcancel()

	f := &forwarder{
		r: r, gen: gen, notify: make(chan struct{}, 1), topic: []byte(r.cfg.Topic), lastCommit: time.Now(),
		keyed:   r.m.messages.WithLabelValues("agent_id"),
		unkeyed: r.m.messages.WithLabelValues("original"),
		cut:     r.m.cut,
	}
	fctx, stopFetch := context.WithCancel(context.Background())
	var fetchers sync.WaitGroup
	defer func() {
		stopFetch()
		fetchers.Wait()
		for _, p := range f.parts {
			p.rd.Close()
			r.m.lag.DeleteLabelValues(p.label)
		}
	}()
	for _, a := range as {
		p := &rpart{
			id: a.ID, label: partitionLabel(a.ID), part: strconv.AppendInt(nil, int64(a.ID), 10),
			ch: make(chan ritem, 512), more: true, waiting: time.Now(),
			produced: -1, committed: max(a.Offset, -1),
		}
		if p.committed >= 0 {
			r.m.committed.WithLabelValues(p.label).Set(float64(p.committed))
		}
		rc := kafka.ReaderConfig{
			Brokers: r.cfg.Brokers, Topic: r.cfg.Topic, Partition: a.ID, Dialer: r.d,
			MinBytes: 1, MaxBytes: r.cfg.FetchMaxBytes, MaxWait: r.cfg.FetchMaxWait,
			QueueCapacity: 1024, ErrorLogger: kafkaLogger(r.log.With("partition", a.ID)),
		}
		if err := rc.Validate(); err != nil {
			r.fail(fmt.Errorf("kafka: repartition reader for partition %d: %w", a.ID, err))
			return
		}
		p.rd = kafka.NewReader(rc)
		f.parts = append(f.parts, p)
		if err := p.rd.SetOffset(a.Offset); err != nil {
			r.fail(fmt.Errorf("kafka: repartition: partition %d: seek to %d: %w", a.ID, a.Offset, err))
			return
		}
		fetchers.Add(1)
		go func() {
			defer fetchers.Done()
			f.fetch(fctx, p)
		}()
	}
	f.loop(ctx, pctx)
	stopFetch()
	fetchers.Wait()
	// What was acknowledged is committed; what was read but not produced
	// is not, and the partitions' next owner forwards it.
	f.commit()
}

// graceContext returns a context that ends d after ctx ends, or when its
// cancel function is called.
func graceContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	g, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-g.Done():
		}
	})
	return g, func() { stop(); cancel() }
}

// fetch reads partition p into p.ch until ctx ends. It first asks the
// broker whether anything is waiting, so that the forwarder need not wait
// for an idle partition.
func (f *forwarder) fetch(ctx context.Context, p *rpart) {
	cfg := &f.r.cfg
	send := func(it ritem) bool {
		select {
		case p.ch <- it:
		case <-ctx.Done():
			return false
		}
		select {
		case f.notify <- struct{}{}:
		default:
		}
		return true
	}
	lctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	lag, err := p.rd.ReadLag(lctx)
	cancel()
	if err == nil && !send(ritem{lag: lag, status: true}) {
		return
	}
	backoff := cfg.RetryBackoff
	for {
		m, err := p.rd.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			f.r.log.Warn("kafka: fetch failed, retrying", "partition", p.id, "err", err, "backoff", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, cfg.MaxRetryBackoff)
			continue
		}
		backoff = cfg.RetryBackoff
		if !send(ritem{m: m, lag: p.rd.Lag()}) {
			return
		}
	}
}

// loop builds and produces batches until ctx ends or producing fails for
// good. It commits every CheckpointInterval.
func (f *forwarder) loop(ctx, pctx context.Context) {
	cfg := &f.r.cfg
	tick := time.NewTicker(max(min(cfg.CheckpointInterval, f.r.alignWait()/2, time.Second), 10*time.Millisecond))
	defer tick.Stop()
	for ctx.Err() == nil {
		if f.build(time.Now()) {
			if !f.produce(pctx) {
				return
			}
			if time.Since(f.lastCommit) >= cfg.CheckpointInterval {
				f.commit()
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-f.notify:
		case <-tick.C:
			for _, p := range f.parts {
				if lag := p.rd.Lag(); lag >= 0 {
					f.r.m.lag.WithLabelValues(p.label).Set(float64(lag))
				}
			}
			if time.Since(f.lastCommit) >= cfg.CheckpointInterval {
				f.commit()
			}
		}
	}
}

// pull makes p's next delivered message its head, if one is there.
func (p *rpart) pull() {
	for !p.has {
		select {
		case it := <-p.ch:
			p.more = it.lag > 0
			if it.status {
				continue
			}
			p.has, p.head, p.waiting = true, it, time.Time{}
			p.valid = p.dec.Decode(it.m.Value, &p.ev) == nil
			p.ts = math.MinInt64 // invalid: forwarded at once
			if p.valid {
				p.ts = p.ev.TS
			}
		default:
			return
		}
	}
}

// build fills the batch (up to MaxBatch) with the partitions' messages in
// event-time order: each time with the head of earliest event time, as long
// as every partition has a head or nothing waiting for it at the broker
// (or has been waited for alignWait already). It reports whether the
// batch holds anything.
func (f *forwarder) build(now time.Time) bool {
	for _, p := range f.parts {
		p.pull()
	}
	for len(f.out) < f.r.cfg.MaxBatch {
		var best *rpart
		for _, p := range f.parts {
			if !p.has {
				if !p.more {
					continue
				}
				if p.waiting.IsZero() {
					p.waiting = now
				}
				if now.Sub(p.waiting) < f.r.alignWait() {
					return len(f.out) > 0 // its next message may be the earliest
				}
				continue // waited long enough: go on without it
			}
			if best == nil || p.ts < best.ts {
				best = p
			}
		}
		if best == nil {
			break
		}
		f.add(best)
		best.has = false
		best.pull()
	}
	return len(f.out) > 0
}

// add appends p's head to the batch: keyed by agent_id when it is a valid
// event, the value and headers kept, the source headers added. The key and
// header values are copied into f.buf, which is never reused (a
// WriteMessages that ctx ended may still send them later).
func (f *forwarder) add(p *rpart) {
	m := &p.head.m
	// f.buf and f.hdrs grow by append: slices taken earlier keep the
	// array they were taken from, and nothing written is changed again.
	key := m.Key
	if p.valid {
		key = f.bytes(p.ev.AgentID)
	}
	start := len(f.hdrs)
	kept := 0
	for _, h := range m.Headers {
		if n := len(h.Key) + len(h.Value); !sourceHeader(h.Key) && kept+n <= forwardMaxHeaders {
			f.hdrs = append(f.hdrs, h)
			kept += n
		}
	}
	cut := len(f.hdrs)-start < len(m.Headers)
	o := len(f.buf)
	f.buf = strconv.AppendInt(f.buf, m.Offset, 10)
	f.hdrs = append(f.hdrs,
		kafka.Header{Key: HeaderSourceTopic, Value: f.topic},
		kafka.Header{Key: HeaderSourcePartition, Value: p.part},
		kafka.Header{Key: HeaderSourceOffset, Value: f.buf[o:len(f.buf):len(f.buf)]},
	)
	if !m.Time.IsZero() {
		o := len(f.buf)
		f.buf = m.Time.UTC().AppendFormat(f.buf, time.RFC3339Nano)
		f.hdrs = append(f.hdrs, kafka.Header{Key: HeaderSourceTimestamp, Value: f.buf[o:len(f.buf):len(f.buf)]})
	}
	value := m.Value
	if value == nil {
		value = []byte{} // a null value would be a tombstone
	}
	if len(value) > forwardMaxValue {
		f.digest(HeaderSourceValueSize, HeaderSourceValueSHA256, value)
		value, cut = value[:forwardMaxValue], true
	}
	if !p.valid && len(key) > forwardMaxKey {
		f.digest(HeaderSourceKeySize, HeaderSourceKeySHA256, key)
		key, cut = key[:forwardMaxKey], true
	}
	f.out = append(f.out, kafka.Message{Key: key, Value: value, Headers: f.hdrs[start:len(f.hdrs):len(f.hdrs)]})
	f.from = append(f.from, p)
	f.offs = append(f.offs, m.Offset)
	if p.valid {
		f.nkeyed++
	}
	if cut {
		f.ncut++
	}
	p.head = ritem{}
}

// digest adds headers sizeKey and sumKey: b's size and SHA-256 (hex).
func (f *forwarder) digest(sizeKey, sumKey string, b []byte) {
	sum := sha256.Sum256(b)
	o := len(f.buf)
	f.buf = strconv.AppendInt(f.buf, int64(len(b)), 10)
	n := len(f.buf)
	f.buf = hex.AppendEncode(f.buf, sum[:])
	f.hdrs = append(f.hdrs,
		kafka.Header{Key: sizeKey, Value: f.buf[o:n:n]},
		kafka.Header{Key: sumKey, Value: f.buf[n:len(f.buf):len(f.buf)]})
}

// bytes copies b into f.buf.
func (f *forwarder) bytes(b []byte) []byte {
	o := len(f.buf)
	f.buf = append(f.buf, b...)
	return f.buf[o:len(f.buf):len(f.buf)]
}

// produce writes the batch to the internal topic, retrying with capped
// exponential backoff until the brokers acknowledge all of it or ctx ends.
// It reports whether they did; then the batch is emptied.
func (f *forwarder) produce(ctx context.Context) bool {
	r := f.r
	backoff := r.cfg.RetryBackoff
	for attempt := 1; ; attempt++ {
		err := r.w.WriteMessages(ctx, f.out...)
		if err == nil {
			if attempt > 1 {
				r.log.Info("repartition produce recovered", "attempts", attempt)
			}
			break
		}
		if ctx.Err() != nil {
			return false
		}
		if perr := permanentWriteError(err); perr != nil {
			r.fail(fmt.Errorf("kafka.repartition_topic: %s: %w", r.cfg.RepartitionTopic, perr))
			return false
		}
		r.m.failures.Inc()
		if attempt == 1 || attempt%10 == 0 {
			r.log.Warn("repartition produce failed; source partitions blocked, retrying", "topic", r.cfg.RepartitionTopic, "messages", len(f.out), "attempt", attempt, "backoff", backoff, "err", summarizeWriteError(err))
		}
		if !sleep(ctx, backoff/2+rand.N(backoff/2+1)) {
			return false
		}
		backoff = min(2*backoff, r.cfg.MaxRetryBackoff)
	}
	for i, p := range f.from {
		p.produced = f.offs[i] + 1
	}
	f.keyed.Add(float64(f.nkeyed))
	f.unkeyed.Add(float64(len(f.out) - f.nkeyed))
	f.cut.Add(float64(f.ncut))
	f.nkeyed, f.ncut = 0, 0
	clear(f.out) // let the messages go
	clear(f.from)
	f.out, f.from, f.offs = f.out[:0], f.from[:0], f.offs[:0]
	f.hdrs, f.buf = nil, nil
	return true
}

// commit commits, for every partition, the offset past its last
// acknowledged message unless it is already.
func (f *forwarder) commit() {
	f.lastCommit = time.Now()
	offs := make(map[int]int64)
	for _, p := range f.parts {
		if p.produced > p.committed {
			offs[p.id] = p.produced
		}
	}
	if len(offs) == 0 {
		return
	}
	err := f.gen.CommitOffsets(map[string]map[int]int64{f.r.cfg.Topic: offs})
	if err != nil {
		lvl := slog.LevelWarn
		if errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.IllegalGeneration) || errors.Is(err, kafka.UnknownMemberId) {
			lvl = slog.LevelDebug
		}
		f.r.log.Log(context.Background(), lvl, "kafka: repartition commit failed", "offsets", offs, "err", err)
		return
	}
	for _, p := range f.parts {
		if o, ok := offs[p.id]; ok {
			p.committed = o
			f.r.m.committed.WithLabelValues(p.label).Set(float64(o))
		}
	}
}

// summarizeWriteError shortens kafka-go's WriteErrors (one error per
// message) to how many failed and the first error.
func summarizeWriteError(err error) error {
	var werrs kafka.WriteErrors
	if !errors.As(err, &werrs) {
		return err
	}
	for _, e := range werrs {
		if e != nil {
			return fmt.Errorf("%d of %d messages not acknowledged: %w", werrs.Count(), len(werrs), e)
		}
	}
	return err
}

// permanentWriteError returns err described for the operator when retrying
// the produce cannot help, else nil.
func permanentWriteError(err error) error {
	var tooLarge kafka.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		var off string
		for _, h := range tooLarge.Message.Headers {
			if h.Key == HeaderSourceOffset {
				off = string(h.Value) // the last one is ours
			}
		}
		return fmt.Errorf("the message at offset %s is larger than the %d bytes vigil forwards, so it cannot be repartitioned (copy it aside and move group <kafka.group>%s past it): %w",
			off, repartitionBatchBytes, RepartitionGroupSuffix, err)
	}
	if errors.Is(err, io.ErrClosedPipe) {
		return err
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if e != nil && kafkaPermanent(e) {
				return e
			}
		}
		return nil
	}
	if kafkaPermanent(err) {
		return err
	}
	return nil
}

// repartitionMetrics are the Repartitioner's Prometheus metrics.
type repartitionMetrics struct {
	messages   *prometheus.CounterVec
	cut        prometheus.Counter
	failures   prometheus.Counter
	committed  *prometheus.GaugeVec
	lag        *prometheus.GaugeVec
	assigned   prometheus.Gauge
	partitions prometheus.Gauge
}

func newRepartitionMetrics(reg prometheus.Registerer) *repartitionMetrics {
	f := promauto.With(reg)
	return &repartitionMetrics{
		messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_repartition_messages_total",
			Help: "Messages forwarded to the repartition topic and acknowledged, by key: agent_id (a valid event) or original (invalid: the detector dead-letters it).",
		}, []string{"key"}),
		cut: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_repartition_messages_cut_total",
			Help: "Messages forwarded cut to fit: a value over the event size limit or an invalid message's key over 1 KiB (the detector dead-letters them with the whole value's and key's size and digest), or producer headers dropped (beyond 16 KiB, or named as the source headers).",
		}),
		failures: f.NewCounter(prometheus.CounterOpts{
			Name: "vigil_repartition_produce_failures_total", Help: "Failed produce requests to the repartition topic (each is retried; the source partition waits).",
		}),
		committed: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_repartition_committed_offset", Help: "Last events-topic offset the repartitioner committed, by partition.",
		}, []string{"partition"}),
		lag: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_repartition_lag_messages", Help: "Messages between the repartitioner's position and the end of the events partition, by partition.",
		}, []string{"partition"}),
		assigned: f.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_repartition_assigned_partitions", Help: "Events-topic partitions this member repartitions.",
		}),
		partitions: f.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_repartition_topic_partitions", Help: "Partitions of the repartition topic.",
		}),
	}
}
