package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/bench"
	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/sim"
	"github.com/vigil-sec/vigil/sinks/alertmanager"
	"github.com/vigil-sec/vigil/sinks/clickhouse"
)

// `vigil demo` runs the whole streaming path on one machine: the in-process
// dev broker, a simulated fleet with labelled incidents produced into the
// events topic over the Kafka protocol at an accelerated clock, and two
// detector Runtimes sharing one consumer group, while a live view shows the
// stream, the consumers and the alerts as they fire. It ends with the
// detection-quality table of bench.Evaluate.

const (
	demoGroup   = "vigil-demo"
	demoMembers = 2
	// demoRefresh is how often the view is redrawn (and the stream checked).
	demoRefresh = 500 * time.Millisecond
	// demoPlainEvery is how often a progress line is printed when the view
	// is not a terminal.
	demoPlainEvery = 5 * time.Second
	// demoJoinTimeout bounds the wait for both members to hold partitions.
	demoJoinTimeout = time.Minute
	// demoDrainTimeout bounds the wait, once everything is produced, for
	// every offset to be committed.
	demoDrainTimeout = time.Minute
)

// errInterrupted is returned by runDemo when ctx ends (SIGINT, SIGTERM)
// before the stream was fully consumed.
var errInterrupted = errors.New("interrupted before the stream was fully consumed; the summary above is partial")

// demoOptions are `vigil demo`'s settings.
type demoOptions struct {
	sim   sim.Config
	speed float64 // simulated seconds per wall-clock second; 0: unpaced
	// refresh and plainEvery pace the view (tests shorten them).
	refresh, plainEvery time.Duration
	// Optional real sinks the members also write to.
	amURLs []string
	chAddr string
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d := sim.DefaultConfig()
	o := demoOptions{sim: sim.Config{Start: d.Start, Rate: d.Rate}, refresh: demoRefresh, plainEvery: demoPlainEvery}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.sim.Agents, "agents", 40, "fleet size (at least 6)")
	fs.IntVar(&o.sim.Days, "days", 5, "simulated days")
	fs.IntVar(&o.sim.WarmupDays, "warmup-days", 2, "leading days without incidents, while the baselines learn (below --days)")
	fs.IntVar(&o.sim.Incidents, "incidents", 10, "malicious incidents to inject after the warm-up")
	fs.Int64Var(&o.sim.Seed, "seed", d.Seed, "random seed: the same seed gives the same fleet and incidents")
	fs.Func("alertmanager.url", "also send the alerts to this Alertmanager (repeat for an HA pair)", func(s string) error {
		o.amURLs = append(o.amURLs, s)
		return nil
	})
	fs.StringVar(&o.chAddr, "clickhouse.addr", "", "also store windows, alerts and the audit chain in this ClickHouse (native protocol host:port, database vigil_demo)")
	fs.Float64Var(&o.speed, "speed", 8640, "simulated seconds per wall-clock second (8640: one simulated day every 10s); 0: as fast as possible")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: vigil demo [flags]

Starts an in-process Kafka-protocol broker, streams a simulated agent fleet
with labelled incidents into its events topic at an accelerated clock, and
scores it with two vigil instances in one consumer group (%s). A live view
shows the stream, consumer lag and alerts as they fire; at the end, what was
caught is compared with the injected incidents. Stop early with Ctrl-C.

`, demoGroup)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vigil demo: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	if o.sim.Days < 1 {
		return fmt.Errorf("demo: --days must be at least 1, got %d", o.sim.Days)
	}
	if err := o.sim.Validate(); err != nil {
		return fmt.Errorf("demo: %w (see vigil demo --help)", err)
	}
	if o.speed < 0 || math.IsNaN(o.speed) || math.IsInf(o.speed, 0) {
		return fmt.Errorf("demo: --speed must be 0 (as fast as possible) or a positive factor, got %v", o.speed)
	}
	// The view goes where someone is watching: stdout if it is a terminal,
	// else stderr. The summary goes to stdout.
	viewOut, tty := stderr, isTerminal(stderr)
	if isTerminal(stdout) {
		viewOut, tty = stdout, true
	}
	return demo(ctx, o, stdout, viewOut, tty)
}

// demoSinks builds the real sinks named by the demo's flags, shared by the
// members.
func demoSinks(ctx context.Context, o demoOptions, log *slog.Logger) (*outputs, error) {
	out := &outputs{}
	if len(o.amURLs) > 0 {
		c := alertmanager.DefaultConfig()
		c.URLs = o.amURLs
		// Simulated time runs fast: resolve quickly in wall-clock terms.
		c.ResendInterval, c.ResolveAfter = 10*time.Second, time.Minute
		s, err := alertmanager.New(c, log)
		if err != nil {
			return nil, fmt.Errorf("--alertmanager.url: %w", err)
		}
		out.add(s, s.Close)
		out.run = append(out.run, s.Run)
	}
	if o.chAddr != "" {
		c := clickhouse.DefaultConfig()
		c.Addr, c.Database = []string{o.chAddr}, "vigil_demo"
		s, err := clickhouse.New(ctx, c, log)
		if err != nil {
			out.Close()
			return nil, fmt.Errorf("--clickhouse.addr: %w", err)
		}
		out.add(s, s.Close)
	}
	return out, nil
}

// demoMember is one of the Runtimes in the demo's consumer group.
type demoMember struct {
	id       int
	rt       *detector.Runtime
	reg      *prometheus.Registry
	parts    []int   // last partitions seen assigned
	messages float64 // messages consumed (from its metrics)
}

// demo runs the demo; the view is written to viewOut (with ANSI redraws when
// tty), the summary to out.
func demo(ctx context.Context, o demoOptions, out, viewOut io.Writer, tty bool) (err error) {
	began := time.Now()
	if d := sim.DefaultConfig(); o.sim.Start.IsZero() {
		o.sim.Start = d.Start // the pacing clock starts there
	}
	var topicParts int
	for _, t := range defaultDevTopics {
		if name, n, err := parseTopic(t); err == nil && name == "agent-events" {
			topicParts = int(n)
		}
	}
	cluster, err := startDevBroker("127.0.0.1:0", defaultDevTopics)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer cluster.Close()
	addr := cluster.ListenAddrs()[0]

	det := detector.DefaultConfig()
	// Revocation requests under the enforce policy (budget, cold baselines;
	// dry run while events are unverified, which the log says), signed with
	// a key made for the demo; they go to no policy engine, only to the
	// summary (and ClickHouse when attached): what vigil would ask.
	det.Revocation.Enabled, det.Revocation.Mode = true, detector.ModeEnforce
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	signer, err := detector.NewSigner("vigil-demo", key)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	kc := demoRuntimeConfig(addr)
	v := newDemoView(o, det.Model.WindowSize, tty, viewOut)
	log := slog.New(slog.NewTextHandler(v.logWriter(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	warnUnverifiedEnforce(log, det)

	pr, truthCh, genDone := generateFleet(o.sim)

	tr := &kafka.Transport{ClientID: "vigil-demo"}
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Topic: kc.Topic, Transport: tr,
		Balancer:  &kafka.Murmur2Balancer{}, // the Java client's partitioner: keyed by agent_id
		BatchSize: demoMaxBatch, BatchBytes: 1 << 20, BatchTimeout: time.Millisecond,
		RequiredAcks: kafka.RequireAll,
	}
	prod := &demoProducer{w: w, start: o.sim.Start, speed: o.speed}
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}

	extra, err := demoSinks(ctx, o, log)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer extra.Close()
	sinkCtx, stopSinks := context.WithCancel(context.Background())
	defer extra.start(sinkCtx, log)()
	defer stopSinks()

	members := make([]*demoMember, demoMembers)
	for i := range members {
		reg := prometheus.NewRegistry()
		name := fmt.Sprintf("demo-%d", i+1)
		sink, err := detector.NewFanout(reg, log, kc.RetryBackoff, kc.MaxRetryBackoff, append([]detector.Sink{&demoSink{name: name, v: v}}, extra.sinks...)...)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		rt, err := detector.NewRuntime(kc, det, sink, reg, log.With("member", i+1))
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		rt.SetSigner(signer)
		members[i] = &demoMember{id: i + 1, rt: rt, reg: reg}
	}
	rctx, stopRuntimes := context.WithCancel(ctx)
	type rtResult struct {
		m   *demoMember
		err error
	}
	rtDone := make(chan rtResult, len(members))
	for _, m := range members {
		go func() { rtDone <- rtResult{m, m.rt.Run(rctx)} }()
	}
	running := len(members)
	pctx, stopProducer := context.WithCancel(ctx)
	prodDone := make(chan error, 1)
	prodStarted := false

	// Whatever happens, stop everything in order and wait for it: the
	// producer and the generator, then the members (which write their last
	// output and commit), then the clients; the broker last (deferred above).
	defer func() {
		stopProducer()
		pr.CloseWithError(errors.New("demo stopped"))
		if prodStarted {
			<-prodDone
		}
		<-genDone
		stopRuntimes()
		for ; running > 0; running-- {
			r := <-rtDone
			if r.err != nil && err == nil {
				err = fmt.Errorf("demo: member %d: %w", r.m.id, r.err)
			}
		}
		w.Close()
		tr.CloseIdleConnections()
	}()

	v.truth(<-truthCh)
	pace := "unpaced"
	if o.speed > 0 {
		pace = fmt.Sprintf("×%g: a simulated day every %s", o.speed, shortDur(time.Duration(float64(24*time.Hour)/o.speed)))
	}
	v.logf("vigil demo: %d agents, %d days (%d warm-up), %d incidents, seed %d, %s; broker %s, topic %s (%d partitions), group %s",
		o.sim.Agents, o.sim.Days, o.sim.WarmupDays, o.sim.Incidents, o.sim.Seed, pace, addr, kc.Topic, topicParts, demoGroup)
	v.setPhase(fmt.Sprintf("joining consumer group %s (%d members, %d partitions)", demoGroup, len(members), topicParts))
	tick := time.NewTicker(o.refresh)
	defer tick.Stop()
	joinDeadline := time.Now().Add(demoJoinTimeout)
	var (
		streamStart, streamEnd, caughtUp time.Time
		genStats                         sim.Stats
		interrupted                      bool
	)
loop:
	for {
		select {
		case <-ctx.Done():
			interrupted = true
			break loop
		case r := <-rtDone:
			running--
			if r.err != nil {
				err = fmt.Errorf("demo: member %d: %w", r.m.id, r.err)
			} else {
				err = fmt.Errorf("demo: member %d stopped unexpectedly", r.m.id)
			}
			break loop
		case perr := <-prodDone:
			prodStarted = false
			if perr != nil {
				if ctx.Err() != nil {
					interrupted = true
				} else {
					err = perr
				}
				break loop
			}
			streamEnd = time.Now()
			g := <-genDone
			genDone <- g // for the deferred wait
			if g.err != nil {
				err = fmt.Errorf("demo: %w", g.err)
				break loop
			}
			genStats = g.st
			v.setPhase("stream produced; waiting for the consumers to commit the last offsets")
		case <-tick.C:
		}

		consumed := 0.0
		for _, m := range members {
			m.messages = metricTotal(m.reg, "vigil_consumer_messages_total")
			consumed += m.messages
			if p := m.rt.Assigned(); len(p) > 0 {
				m.parts = p
			}
		}
		switch {
		case streamStart.IsZero():
			if settled(members, topicParts) {
				streamStart = time.Now()
				prod.began = streamStart
				prodStarted = true
				go func() { prodDone <- prod.run(pctx, pr) }()
				v.setPhase("streaming")
			} else if time.Now().After(joinDeadline) {
				err = fmt.Errorf("demo: the consumer group did not give both members partitions within %v", demoJoinTimeout)
				break loop
			}
		case !streamEnd.IsZero() && time.Since(streamEnd) > demoDrainTimeout:
			err = fmt.Errorf("demo: the consumers did not commit every offset within %v of the end of the stream", demoDrainTimeout)
			break loop
		case !streamEnd.IsZero() && consumed >= float64(prod.produced.Load()):
			ok, cerr := committedToEnd(ctx, cl, kc.Topic, kc.Group, topicParts)
			if cerr != nil && ctx.Err() == nil {
				v.logf("checking committed offsets: %v", cerr)
			}
			if ok {
				caughtUp = time.Now()
				break loop
			}
		}
		v.draw(prod, members, consumed, false)
	}

	// Final frame and summary. The members are still in the group here;
	// stop them first so that their last alerts are in.
	stopProducer()
	stopRuntimes()
	for ; running > 0; running-- {
		r := <-rtDone
		if r.err != nil && err == nil {
			err = fmt.Errorf("demo: member %d: %w", r.m.id, r.err)
		}
	}
	if prodStarted {
		<-prodDone
		prodStarted = false
	}
	consumed := 0.0
	for _, m := range members {
		m.messages = metricTotal(m.reg, "vigil_consumer_messages_total")
		consumed += m.messages
	}
	switch {
	case err != nil:
		v.setPhase("failed")
	case interrupted:
		v.setPhase("interrupted")
	default:
		v.setPhase("done")
	}
	v.draw(prod, members, consumed, true)
	if err == nil && interrupted {
		err = errInterrupted
	}
	if streamStart.IsZero() {
		return err
	}
	if streamEnd.IsZero() {
		streamEnd = time.Now()
	}
	s := demoSummary{
		o: o, stats: genStats, began: began, streamStart: streamStart, streamEnd: streamEnd, caughtUp: caughtUp,
		produced: prod.produced.Load(), consumed: consumed, peakProduced: v.peak[0], peakConsumed: v.peak[1],
		members: members, complete: !caughtUp.IsZero(), topic: kc.Topic, parts: topicParts,
		simNow: time.Unix(0, max(prod.simNow.Load(), o.sim.Start.UnixNano())).UTC(),
	}
	v.summary(out, s)
	return err
}

// demoRuntimeConfig is the Runtimes' configuration: the dev broker and
// timing fit for a one-minute demo (quick joins, frequent commits).
func demoRuntimeConfig(addr string) detector.RuntimeConfig {
	kc := detector.DefaultRuntimeConfig()
	kc.Brokers = []string{addr}
	kc.Group = demoGroup
	kc.ClientID = "vigil-demo"
	kc.HeartbeatInterval = 250 * time.Millisecond
	kc.SessionTimeout = 6 * time.Second // kfake's minimum
	kc.RebalanceTimeout = 10 * time.Second
	kc.ShutdownTimeout = 5 * time.Second
	kc.JoinBackoff = 250 * time.Millisecond
	kc.CheckpointInterval = 250 * time.Millisecond
	return kc
}

// settled reports whether every member holds partitions and together they
// hold all n: the group has finished its first rebalance.
func settled(members []*demoMember, n int) bool {
	seen := map[int]bool{}
	for _, m := range members {
		p := m.rt.Assigned()
		if len(p) == 0 {
			return false
		}
		for _, id := range p {
			if seen[id] {
				return false
			}
			seen[id] = true
		}
	}
	return len(seen) == n
}

// committedToEnd reports whether the group's committed offset of every
// partition of topic has reached the partition's end.
func committedToEnd(ctx context.Context, cl *kafka.Client, topic, group string, n int) (bool, error) {
	parts := make([]int, n)
	reqs := make([]kafka.OffsetRequest, n)
	for i := range n {
		parts[i], reqs[i] = i, kafka.LastOffsetOf(i)
	}
	lo, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return false, err
	}
	of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return false, err
	}
	committed := map[int]int64{}
	for _, p := range of.Topics[topic] {
		if p.Error != nil {
			return false, p.Error
		}
		committed[p.Partition] = p.CommittedOffset
	}
	ends := lo.Topics[topic]
	if len(ends) != n {
		return false, fmt.Errorf("%d partitions listed, want %d", len(ends), n)
	}
	for _, p := range ends {
		if p.Error != nil {
			return false, p.Error
		}
		if c, ok := committed[p.Partition]; p.LastOffset > 0 && (!ok || c < p.LastOffset) {
			return false, nil
		}
	}
	return true, nil
}

// metricTotal sums the series of a counter or gauge in reg.
func metricTotal(reg prometheus.Gatherer, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

type genResult struct {
	st  sim.Stats
	err error
}

// generateFleet runs sim.Generate in a goroutine. Its events are read from
// the pipe (closing the reader stops it); the truth is sent on the first
// channel before the first event; the second channel receives the outcome.
func generateFleet(cfg sim.Config) (*io.PipeReader, <-chan []sim.Incident, chan genResult) {
	pr, pw := io.Pipe()
	truthCh := make(chan []sim.Incident, 1)
	done := make(chan genResult, 1)
	go func() {
		var tb bytes.Buffer
		sent := false
		sendTruth := func() {
			if !sent {
				sent = true
				t, _ := bench.ReadTruth(bytes.NewReader(tb.Bytes())) // written by sim: well formed
				truthCh <- t
			}
		}
		st, err := sim.Generate(cfg, firstWrite{w: pw, f: sendTruth}, &tb)
		sendTruth()
		pw.CloseWithError(err)
		done <- genResult{st, err}
	}()
	return pr, truthCh, done
}

// firstWrite calls f before the first Write to w.
type firstWrite struct {
	w io.Writer
	f func()
}

func (fw firstWrite) Write(p []byte) (int, error) {
	fw.f() // idempotent
	return fw.w.Write(p)
}

// demoMaxBatch bounds the messages the producer sends in one call.
const demoMaxBatch = 2000

// demoProducer streams JSONL events into Kafka, keyed by agent_id, paced by
// their event time.
type demoProducer struct {
	w     *kafka.Writer
	start time.Time // simulated time at the start of the stream
	speed float64   // simulated seconds per wall-clock second; 0: unpaced
	began time.Time // wall time at the start of the stream; set before run

	produced atomic.Int64 // messages acknowledged by the broker
	simNow   atomic.Int64 // newest event time produced, Unix ns
}

// run reads r line by line and produces every line (valid or not: bad input
// is part of the stream) until r ends or ctx ends. A line is sent when the
// wall clock reaches its event time scaled by speed; lines due together
// are sent in one call.
func (p *demoProducer) run(ctx context.Context, r io.Reader) error {
	const slack = 20 * time.Millisecond // send early rather than sleep for less
	br := bufio.NewReaderSize(r, 1<<20)
	start := p.start.UnixNano()
	clock := start // newest event time read: the pacing clock
	batch := make([]kafka.Message, 0, demoMaxBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := p.w.WriteMessages(ctx, batch...); err != nil {
			return fmt.Errorf("demo: produce to %s: %w", p.w.Topic, err)
		}
		p.produced.Add(int64(len(batch)))
		p.simNow.Store(clock)
		clear(batch)
		batch = batch[:0]
		return nil
	}
	for {
		line, err := br.ReadBytes('\n') // a copy: the batch keeps it
		if line = bytes.TrimRight(line, "\r\n"); len(line) > 0 {
			if ts, ok := eventTime(line); ok && ts > clock {
				clock = ts
			}
			if p.speed > 0 {
				due := p.began.Add(time.Duration(float64(clock-start) / p.speed))
				if time.Until(due) > slack {
					if ferr := flush(); ferr != nil {
						return ferr
					}
					if !sleepCtx(ctx, time.Until(due)) {
						return ctx.Err()
					}
				}
			}
			batch = append(batch, kafka.Message{Key: jsonField(line, `"agent_id":"`), Value: line})
			if len(batch) == demoMaxBatch {
				if ferr := flush(); ferr != nil {
					return ferr
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return flush()
		}
		if err != nil {
			return fmt.Errorf("demo: simulate: %w", err)
		}
	}
}

// jsonField returns the raw value of the string field introduced by key in
// a JSON line, or nil.
func jsonField(line []byte, key string) []byte {
	_, after, ok := bytes.Cut(line, []byte(key))
	if !ok {
		return nil
	}
	v, _, ok := bytes.Cut(after, []byte(`"`))
	if !ok {
		return nil
	}
	return v
}

// eventTime returns the ts of a JSON event line as Unix ns.
func eventTime(line []byte) (int64, bool) {
	v := jsonField(line, `"ts":"`)
	if v == nil {
		return 0, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(v))
	if err != nil {
		return 0, false
	}
	return t.UnixNano(), true
}

// sleepCtx waits d or until ctx ends; it reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// demoSink collects one member's alerts and dead letters into the view.
type demoSink struct {
	name string
	v    *demoView
}

var _ detector.Sink = (*demoSink)(nil)

func (s *demoSink) Name() string { return s.name }

// Write is safe for concurrent use; it never fails.
func (s *demoSink) Write(_ context.Context, b detector.Batch) error {
	s.v.add(b)
	return nil
}

// demoView is the demo's state as shown: alerts (one per alert_id),
// dead letters, incidents detected. Sinks add to it from the members'
// workers; the demo goroutine draws it.
type demoView struct {
	o     demoOptions
	grace time.Duration
	tty   bool
	w     io.Writer

	mu       sync.Mutex
	alerts   map[string]*detector.Alert
	fresh    []*detector.Alert // not yet printed
	logs     []string          // not yet printed
	bySev    map[detector.Severity]int
	early    int
	dead     map[features.Reason]int
	revoked  map[string]*detector.Revocation // request_id → request
	phase    string
	mal, ben []sim.Incident
	detected map[string]time.Time // incident_id → earliest detection

	// drawing state (demo goroutine only)
	panel    int // lines of the panel on screen (tty)
	lastLine time.Time
	samples  []demoSample
	peak     [2]float64 // events/s produced, consumed
}

type demoSample struct {
	at                 time.Time
	produced, consumed float64
}

func newDemoView(o demoOptions, grace time.Duration, tty bool, w io.Writer) *demoView {
	return &demoView{
		o: o, grace: grace, tty: tty, w: w,
		alerts: map[string]*detector.Alert{}, bySev: map[detector.Severity]int{},
		dead: map[features.Reason]int{}, detected: map[string]time.Time{},
		revoked: map[string]*detector.Revocation{},
	}
}

func (v *demoView) truth(t []sim.Incident) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, inc := range t {
		if inc.Benign {
			v.ben = append(v.ben, inc)
		} else {
			v.mal = append(v.mal, inc)
		}
	}
}

func (v *demoView) setPhase(p string) {
	v.mu.Lock()
	v.phase = p
	v.mu.Unlock()
}

func (v *demoView) logf(format string, args ...any) {
	v.mu.Lock()
	v.logs = append(v.logs, fmt.Sprintf(format, args...))
	v.mu.Unlock()
}

// logWriter returns a writer whose lines are printed above the panel.
func (v *demoView) logWriter() io.Writer {
	return writerFunc(func(b []byte) (int, error) {
		// Two members joining one after the other always cause one
		// rebalance, which kafka-go reports as a failure: not news here.
		if !bytes.Contains(b, []byte("Rebalance In Progress")) {
			v.logf("%s", strings.TrimRight(string(b), "\n"))
		}
		return len(b), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// add records a batch. A redelivered alert (same alert_id) keeps its
// earliest detection.
func (v *demoView) add(b detector.Batch) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, d := range b.DeadLetters {
		v.dead[d.Reason]++
	}
	for _, r := range b.Revocations {
		v.revoked[r.RequestID] = r
	}
	for _, a := range b.Alerts {
		if old, ok := v.alerts[a.AlertID]; ok {
			if a.DetectedAt.Before(old.DetectedAt) {
				*old = *a
			}
			continue
		}
		v.alerts[a.AlertID] = a
		v.fresh = append(v.fresh, a)
		v.bySev[a.Severity]++
		if a.DetectedAt.Before(a.WindowEnd) {
			v.early++
		}
		if inc := v.incidentOf(a); inc != nil {
			if d, ok := v.detected[inc.ID]; !ok || a.DetectedAt.Before(d) {
				v.detected[inc.ID] = a.DetectedAt
			}
		}
	}
}

// incidentOf returns the malicious incident a matches as bench.Evaluate
// matches them (same agent, the alert's window overlapping the incident
// plus one window of grace), or nil. Called with v.mu held.
func (v *demoView) incidentOf(a *detector.Alert) *sim.Incident {
	ws, we := a.WindowStart, a.WindowEnd
	if !we.After(ws) {
		we = ws.Add(time.Nanosecond)
	}
	for i := range v.mal {
		inc := &v.mal[i]
		if inc.AgentID == a.AgentID && ws.Before(inc.End.Add(v.grace)) && inc.Start.Before(we) {
			return inc
		}
	}
	return nil
}

// benignOf returns the benign change a false alert falls on (within a day of
// its start), or nil. Called with v.mu held.
func (v *demoView) benignOf(a *detector.Alert) *sim.Incident {
	for i := range v.ben {
		inc := &v.ben[i]
		mine := inc.AgentID == a.AgentID || (inc.AgentID == "*" && inc.AgentClass == a.AgentClass)
		if mine && a.WindowStart.Before(inc.Start.Add(24*time.Hour)) && inc.Start.Before(a.WindowEnd) {
			return inc
		}
	}
	return nil
}

// ANSI sequences for the terminal view.
const (
	ansiReset    = "\x1b[0m"
	ansiBold     = "\x1b[1m"
	ansiDim      = "\x1b[2m"
	ansiRed      = "\x1b[1;31m"
	ansiYellow   = "\x1b[33m"
	ansiGreen    = "\x1b[32m"
	ansiClearEOL = "\x1b[K"
	ansiClearEOS = "\x1b[J"
	ansiNoWrap   = "\x1b[?7l" // long panel lines are cut, not wrapped: the redraw counts lines
	ansiWrap     = "\x1b[?7h"
)

func (v *demoView) color(c, s string) string {
	if !v.tty || os.Getenv("NO_COLOR") != "" {
		return s
	}
	return c + s + ansiReset
}

// alertLine formats one alert: when it fired (event time), severity, score,
// kind, agent, the incident it caught (and how long after the incident
// began) or that it is false, and its top reason. Called with v.mu held.
func (v *demoView) alertLine(a *detector.Alert) string {
	sev := fmt.Sprintf("%-8s", a.Severity)
	switch a.Severity {
	case detector.SeverityCritical:
		sev = v.color(ansiRed, sev)
	case detector.SeverityWarning:
		sev = v.color(ansiYellow, sev)
	}
	reason := ""
	if len(a.Reasons) > 0 {
		r := a.Reasons[0]
		reason = fmt.Sprintf("%s %.4g (usually %.3g, z %.1f)", r.Feature, r.Value, r.Expected, r.Z)
	}
	var what string
	if inc := v.incidentOf(a); inc != nil {
		what = v.color(ansiGreen, fmt.Sprintf("✓ %s %s +%s", inc.ID, inc.Kind, shortDur(max(0, a.DetectedAt.Sub(inc.Start)))))
	} else if b := v.benignOf(a); b != nil {
		what = v.color(ansiDim, "✗ false alert (benign "+b.Kind+")")
	} else {
		what = v.color(ansiDim, "✗ false alert")
	}
	return fmt.Sprintf("%s  %s %5.1f  %-17s  %-20s  %s  %s",
		a.DetectedAt.UTC().Format("Mon 15:04:05"), sev, a.Score, a.Kind, shortAgent(a.AgentID), what, reason)
}

// draw prints new alerts and log lines, then the status panel: redrawn in
// place on a terminal, a progress line every plainEvery otherwise (and at
// the end).
func (v *demoView) draw(p *demoProducer, members []*demoMember, consumed float64, final bool) {
	now := time.Now()
	produced := float64(p.produced.Load())
	v.samples = append(v.samples, demoSample{now, produced, consumed})
	for len(v.samples) > 2 && now.Sub(v.samples[0].at) > 2*time.Second {
		v.samples = v.samples[1:]
	}
	var rp, rc float64
	if s := v.samples[0]; now.Sub(s.at) > 100*time.Millisecond {
		dt := now.Sub(s.at).Seconds()
		rp, rc = (produced-s.produced)/dt, (consumed-s.consumed)/dt
		v.peak[0], v.peak[1] = max(v.peak[0], rp), max(v.peak[1], rc)
	}

	// Build the frame under the lock, write it without: a slow terminal
	// must not block the sinks.
	v.mu.Lock()
	var b strings.Builder
	if v.tty && v.panel > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\r%s", v.panel, ansiClearEOS)
	}
	for _, l := range v.logs {
		b.WriteString(l + "\n")
	}
	for _, a := range v.fresh {
		if !v.tty {
			b.WriteString("alert ")
		}
		b.WriteString(v.alertLine(a) + "\n")
	}
	v.logs, v.fresh = v.logs[:0], v.fresh[:0]

	simNow := time.Unix(0, p.simNow.Load()).UTC()
	total := time.Duration(v.o.sim.Days) * 24 * time.Hour
	frac := 0.0
	if p.produced.Load() > 0 {
		frac = min(1, max(0, float64(simNow.Sub(v.o.sim.Start))/float64(total)))
	}
	injected := 0
	for _, inc := range v.mal {
		if p.produced.Load() > 0 && !inc.Start.After(simNow) {
			injected++
		}
	}
	lag := max(0, produced-consumed)
	alerts := len(v.alerts)
	deadN := 0
	for _, n := range v.dead {
		deadN += n
	}
	if v.tty {
		const width = 30
		bar := int(frac*width + 0.5)
		clock := "—"
		if p.produced.Load() > 0 {
			clock = simNow.Format("Mon 2006-01-02 15:04")
		}
		warm := ""
		if p.produced.Load() > 0 && simNow.Before(v.o.sim.Start.Add(time.Duration(v.o.sim.WarmupDays)*24*time.Hour)) {
			warm = v.color(ansiDim, "  warm-up")
		}
		var groups []string
		for _, m := range members {
			groups = append(groups, fmt.Sprintf("member %d ← %s (%s)", m.id, intsList(m.parts), grouped(m.messages)))
		}
		lines := []string{
			"",
			v.color(ansiBold, "vigil demo") + "  " + v.phase,
			fmt.Sprintf("simulated  %s  [%s%s] %3.0f%%%s", clock, strings.Repeat("█", bar), strings.Repeat("░", width-bar), 100*frac, warm),
			fmt.Sprintf("produced   %9s events  %7s/s", grouped(produced), grouped(rp)),
			fmt.Sprintf("consumed   %9s events  %7s/s   lag %s", grouped(consumed), grouped(rc), grouped(lag)),
			fmt.Sprintf("group      %s: %s", demoGroup, strings.Join(groups, "  ")),
			fmt.Sprintf("alerts     %d: %d critical, %d warning   dead letters %d", alerts, v.bySev[detector.SeverityCritical], v.bySev[detector.SeverityWarning], deadN),
			fmt.Sprintf("incidents  %s of %d injected so far (%d planned)", v.color(ansiGreen, fmt.Sprintf("%d detected", len(v.detected))), injected, len(v.mal)),
		}
		if !p.began.IsZero() {
			lines = append(lines, fmt.Sprintf("wall       %s", shortDur(now.Sub(p.began))))
		}
		b.WriteString(ansiNoWrap)
		for _, l := range lines {
			b.WriteString(l + ansiClearEOL + "\n")
		}
		b.WriteString(ansiWrap)
		v.panel = len(lines)
		if final {
			v.panel = 0
		}
	} else if final || now.Sub(v.lastLine) >= v.o.plainEvery {
		v.lastLine = now
		clock := "not started"
		if p.produced.Load() > 0 {
			clock = simNow.Format("2006-01-02 15:04")
		}
		fmt.Fprintf(&b, "demo: %s | simulated %s %.0f%% | produced %.0f (%.0f/s) consumed %.0f (%.0f/s) lag %.0f | alerts %d | incidents %d detected of %d injected (%d planned)\n",
			v.phase, clock, 100*frac, produced, rp, consumed, rc, lag, alerts, len(v.detected), injected, len(v.mal))
	}
	v.mu.Unlock()
	io.WriteString(v.w, b.String())
}

// demoSummary is what the summary reports.
type demoSummary struct {
	o                                       demoOptions
	stats                                   sim.Stats
	began, streamStart, streamEnd, caughtUp time.Time
	produced                                int64
	consumed, peakProduced, peakConsumed    float64
	simNow                                  time.Time // newest event time produced
	members                                 []*demoMember
	complete                                bool
	topic                                   string
	parts                                   int
}

// summary writes the closing figures and the detection-quality table.
func (v *demoView) summary(w io.Writer, s demoSummary) {
	v.mu.Lock()
	defer v.mu.Unlock()
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintf(bw, "\n== vigil demo: summary\n")
	c := s.o.sim
	if s.stats.Events > 0 {
		fmt.Fprintf(bw, "fleet         %d agents, %d days from %s (%d warm-up), seed %d: %s events + %d duplicate and %d invalid lines; %d incidents, %d benign changes\n",
			s.stats.Agents, c.Days, c.Start.Format("2006-01-02"), c.WarmupDays, c.Seed, grouped(float64(s.stats.Events)), s.stats.Duplicates, s.stats.Invalid, len(v.mal), len(v.ben))
	}
	streamed := s.streamEnd.Sub(s.streamStart)
	pace := "unpaced"
	if s.o.speed > 0 {
		pace = fmt.Sprintf("at ×%g", s.o.speed)
	}
	fmt.Fprintf(bw, "stream        %s messages into %s (%d partitions) in %s %s: %s/s on average, %s/s at peak\n",
		grouped(float64(s.produced)), s.topic, s.parts, shortDur(streamed), pace, grouped(float64(s.produced)/max(streamed.Seconds(), 1e-3)), grouped(s.peakProduced))
	var ms []string
	for _, m := range s.members {
		ms = append(ms, fmt.Sprintf("member %d partitions %s: %s", m.id, intsList(m.parts), grouped(m.messages)))
	}
	fmt.Fprintf(bw, "consumed      %s messages by group %s (%s); %s/s at peak\n", grouped(s.consumed), demoGroup, strings.Join(ms, "; "), grouped(s.peakConsumed))
	if s.complete {
		fmt.Fprintf(bw, "              every offset committed %s after the last message was produced; whole demo %s\n",
			shortDur(s.caughtUp.Sub(s.streamEnd)), shortDur(time.Since(s.began)))
	} else {
		fmt.Fprintf(bw, "              stopped before the end of the stream (lag %s)\n", grouped(max(0, float64(s.produced)-s.consumed)))
	}
	var reasons []string
	deadN := 0
	for r, n := range v.dead {
		deadN += n
		reasons = append(reasons, fmt.Sprintf("%s=%d", r, n))
	}
	sort.Strings(reasons)
	fmt.Fprintf(bw, "dead letters  %d %v\n", deadN, reasons)
	fmt.Fprintf(bw, "alerts        %d: %d critical, %d warning, %d info; %d fired before their window closed\n",
		len(v.alerts), v.bySev[detector.SeverityCritical], v.bySev[detector.SeverityWarning], v.bySev[detector.SeverityInfo], v.early)
	if n := len(v.revoked); n > 0 {
		onIncident, why := 0, map[string]int{}
		for _, r := range v.revoked {
			why[r.Why]++
			if v.incidentOf(&detector.Alert{AgentID: r.AgentID, WindowStart: r.WindowStart, WindowEnd: r.WindowEnd}) != nil {
				onIncident++
			}
		}
		fmt.Fprintf(bw, "revocations   %d signed requests (sent to no policy engine): %d on injected incidents, %d on false alarms; %d enforce, %d dry run (events unverified), %d dry run (cold baseline), %d dry run (budget spent)\n",
			n, onIncident, n-onIncident, why[detector.WhyPolicy], why[detector.WhyUnverified], why[detector.WhyCold], why[detector.WhyBudget])
	} else {
		fmt.Fprintf(bw, "revocations   none (no alert met the revocation policy)\n")
	}
	for _, u := range s.o.amURLs {
		fmt.Fprintf(bw, "alertmanager  sent to %s: amtool --alertmanager.url=%s alert query alertname=%s\n", u, u, alertmanager.DefaultAlertName)
	}
	if a := s.o.chAddr; a != "" {
		host, port, _ := net.SplitHostPort(a)
		fmt.Fprintf(bw, "clickhouse    windows, alerts and the audit chain in %s database vigil_demo: clickhouse-client --host %s --port %s --query 'SELECT agent_id, kind, severity, score FROM vigil_demo.alerts FINAL ORDER BY score DESC LIMIT 10'\n", a, host, port)
	}

	alerts := make([]bench.Alert, 0, len(v.alerts))
	for _, a := range v.alerts {
		alerts = append(alerts, bench.Alert{
			AlertID: a.AlertID, AgentID: a.AgentID, AgentClass: a.AgentClass, Kind: a.Kind,
			Severity: a.Severity.String(), Score: a.Score,
			WindowStart: a.WindowStart, WindowEnd: a.WindowEnd, DetectedAt: a.DetectedAt,
		})
	}
	truth := slices.Concat(v.mal, v.ben)
	agents, days := s.stats.Agents, float64(c.Days)
	if !s.complete {
		// Judge only what was streamed: the incidents that had begun.
		truth = slices.DeleteFunc(truth, func(inc sim.Incident) bool { return inc.Start.After(s.simNow) })
		days = max(0, s.simNow.Sub(c.Start).Hours()/24)
		if agents == 0 {
			agents = c.Agents
		}
	}
	rep := bench.Evaluate(truth, alerts, v.grace, float64(agents)*days)
	fmt.Fprintf(bw, "\n== detection quality: alerts vs. the %d injected incidents (same agent, window overlapping the incident + %v)\n", rep.Incidents, v.grace)
	if !s.complete {
		fmt.Fprintf(bw, "(partial: the stream stopped at %s, before it was fully consumed; incidents begun by then only)\n", s.simNow.Format(time.RFC3339))
	}
	bw.Flush()
	rep.WriteTable(w)
}

// shortAgent drops the SPIFFE prefix of an agent id.
func shortAgent(id string) string { return id[strings.LastIndexByte(id, '/')+1:] }

// shortDur formats d to a tenth of a second below a minute, to the second
// above.
func shortDur(d time.Duration) string {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// grouped formats a count with thousands separators.
func grouped(f float64) string {
	s := strconv.FormatInt(int64(math.Round(f)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func intsList(xs []int) string {
	if len(xs) == 0 {
		return "-"
	}
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// isTerminal reports whether w is a terminal: a character device other than
// /dev/null, and TERM is not "dumb". (A heuristic that needs no ioctl:
// golang.org/x/term is not a dependency.)
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}
