package detector

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/vigil-sec/vigil/sim"
)

// BenchmarkRuntimeKafka measures end-to-end consumption through a Kafka
// protocol broker: kfake in this process (so it shares the CPUs), 6
// partitions, a simulated fleet of 80 agents over 2 days, keyed by agent.
// Each iteration is a fresh consumer group reading every message, scoring
// it, checkpointing and committing; the figure is messages per second from
// Run's start to the last commit.
//
//	go test -run '^$' -bench RuntimeKafka -benchtime 3x ./detector
func BenchmarkRuntimeKafka(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, ktTopic))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	var buf, truth bytes.Buffer
	if _, err := sim.Generate(sim.Config{Seed: 1, Agents: 80, Days: 2, WarmupDays: 1, Incidents: 4}, &buf, &truth); err != nil {
		b.Fatal(err)
	}
	var msgs []kafka.Message
	part := map[string]int{}
	for _, l := range bytes.Split(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), []byte("\n")) {
		key := l
		if _, after, ok := bytes.Cut(l, []byte(`"agent_id":"`)); ok {
			if id, _, ok := bytes.Cut(after, []byte(`"`)); ok {
				key = id
			}
		}
		p, ok := part[string(key)]
		if !ok {
			p = len(part) % 6
			part[string(key)] = p
		}
		msgs = append(msgs, kafka.Message{Key: key, Value: l, Headers: []kafka.Header{{Key: ktPartitionHeader, Value: []byte(strconv.Itoa(p))}}})
	}
	tr := &kafka.Transport{}
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Topic: ktTopic, Transport: tr,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int {
			p, _ := strconv.Atoi(string(m.Headers[0].Value))
			return p
		}),
		BatchSize: 2000, BatchBytes: 900 << 10, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll,
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		b.Fatalf("produce: %.300v", err)
	}
	w.Close()
	tr.CloseIdleConnections()
	b.ReportAllocs()
	b.ResetTimer()
	var elapsed time.Duration
	for i := range b.N {
		cfg := DefaultRuntimeConfig()
		cfg.Brokers, cfg.Topic, cfg.Group = []string{addr}, ktTopic, fmt.Sprintf("bench-%d", i)
		// Offsets are committed at checkpoints: a second apart here, as
		// commits were before checkpoints existed, so that the figure
		// stays comparable. Each group checkpoints to a state topic of its
		// own.
		cfg.CheckpointInterval, cfg.StateTopic = time.Second, fmt.Sprintf("bench-state-%d", i)
		reg := prometheus.NewRegistry()
		rt, err := NewRuntime(cfg, DefaultConfig(), discardSink{}, reg, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- rt.Run(ctx) }()
		r := &ktRunning{rt: rt, reg: reg}
		for r.metric(b, "vigil_consumer_committed_offset") < float64(len(msgs)) {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed += time.Since(start)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(msgs))*float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(len(msgs)), "msgs/op")
}

type discardSink struct{}

func (discardSink) Name() string                       { return "discard" }
func (discardSink) Write(context.Context, Batch) error { return nil }
