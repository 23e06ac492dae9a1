package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/clickhouse"
)

// AuditHeads configures the publication of the ClickHouse audit chains'
// heads (outputs.clickhouse.audit_heads): each chain's last entry
// (topic, partition, seq, hash, at), so that the chains can be checked
// against a record kept outside ClickHouse (`vigil audit verify
// --head-topic`). Heads always feed the metric
// vigil_audit_chain_head_sequence.
type AuditHeads struct {
	// Enabled publishes the heads to Topic (default true).
	Enabled bool `yaml:"enabled"`
	// Topic is a compacted topic on the events topic's cluster, keyed by
	// topic/partition, value the head as JSON. Created (one partition,
	// cleanup.policy=compact) when missing. Default vigil-audit-heads.
	Topic string `yaml:"topic"`
	// Interval between publications of the heads that changed; the last
	// is published when vigil stops (default 30s).
	Interval time.Duration `yaml:"interval"`
}

// DefaultAuditHeadsTopic is AuditHeads.Topic's default.
const DefaultAuditHeadsTopic = "vigil-audit-heads"

// DefaultAuditHeads returns the defaults.
func DefaultAuditHeads() AuditHeads {
	return AuditHeads{Enabled: true, Topic: DefaultAuditHeadsTopic, Interval: 30 * time.Second}
}

// Validate checks the configuration against kc's topics.
func (a AuditHeads) Validate(kc detector.RuntimeConfig) error {
	bad := func(field, msg string) error {
		return &detector.ConfigError{Field: "outputs.clickhouse.audit_heads." + field, Msg: msg}
	}
	switch {
	case a.Interval <= 0:
		return bad("interval", "must be > 0")
	case !a.Enabled:
		return nil
	case !validHeadsTopic(a.Topic):
		return bad("topic", fmt.Sprintf("%q: want 1-249 letters, digits, '.', '_' or '-'", a.Topic))
	case a.Topic == kc.Topic || a.Topic == kc.StateTopic || a.Topic == kc.RepartitionTopic:
		return bad("topic", fmt.Sprintf("%q is one of vigil's input or state topics: the heads need a topic of their own", a.Topic))
	}
	return nil
}

func validHeadsTopic(t string) bool {
	if t == "" || t == "." || t == ".." || len(t) > 249 {
		return false
	}
	return strings.IndexFunc(t, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) < 0
}

// headSource is what the publisher needs of the ClickHouse sink.
type headSource interface{ Heads() []clickhouse.Head }

// headPublisher publishes the heads of src's chains every interval (those
// that changed since the last publication) and once more when it stops,
// to the heads topic, logging each; a publication that fails is counted,
// logged and retried at the next tick. Its collector exposes the heads'
// sequence numbers. Run it once; Close after Run returns.
type headPublisher struct {
	src      headSource
	interval time.Duration
	log      *slog.Logger
	topic    string
	tr       *kafka.Transport
	w        *kafka.Writer // nil: not published to Kafka
	sent     map[string]clickhouse.Head

	failures  prometheus.Counter
	published prometheus.Gauge
}

// Heads' hashes are not metric labels: each new head would be a new
// series, and Prometheus is no record to anchor a chain in. They are in the
// heads topic and in the log.
var headSeqDesc = prometheus.NewDesc("vigil_audit_chain_head_sequence",
	"Sequence number of the last entry this instance appended to the audit chain of an events topic partition (ClickHouse).",
	[]string{"topic", "partition"}, nil)

func newHeadPublisher(ctx context.Context, src headSource, kc detector.RuntimeConfig, cfg AuditHeads, reg prometheus.Registerer, log *slog.Logger) (*headPublisher, error) {
	if err := cfg.Validate(kc); err != nil {
		return nil, err
	}
	p := &headPublisher{src: src, interval: cfg.Interval, log: log, topic: cfg.Topic, sent: make(map[string]clickhouse.Head)}
	if cfg.Enabled {
		d, err := kc.Dialer()
		if err != nil {
			return nil, err
		}
		p.tr = &kafka.Transport{DialTimeout: kc.DialTimeout, ClientID: kc.ClientID, TLS: d.TLS, SASL: d.SASLMechanism}
		if err := prepareHeadsTopic(ctx, kc, p.tr, cfg.Topic, log); err != nil {
			p.tr.CloseIdleConnections()
			return nil, err
		}
		p.w = &kafka.Writer{
			Addr: kafka.TCP(kc.Brokers...), Topic: cfg.Topic, Transport: p.tr,
			Balancer: kafka.CRC32Balancer{}, RequiredAcks: kafka.RequireAll,
			BatchTimeout: time.Millisecond, WriteTimeout: 10 * time.Second, MaxAttempts: 3,
		}
	}
	f := promauto.With(reg)
	p.failures = f.NewCounter(prometheus.CounterOpts{Name: "vigil_audit_head_publish_failures_total",
		Help: "Publications of audit chain heads to the heads topic that failed (retried at the next interval)."})
	p.published = f.NewGauge(prometheus.GaugeOpts{Name: "vigil_audit_head_last_published_timestamp_seconds",
		Help: "When audit chain heads were last published to the heads topic (Unix time; 0: never)."})
	if reg != nil {
		if err := reg.Register(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Describe implements prometheus.Collector.
func (p *headPublisher) Describe(ch chan<- *prometheus.Desc) { ch <- headSeqDesc }

// Collect implements prometheus.Collector: the heads as of now.
func (p *headPublisher) Collect(ch chan<- prometheus.Metric) {
	for _, h := range p.src.Heads() {
		ch <- prometheus.MustNewConstMetric(headSeqDesc, prometheus.GaugeValue, float64(h.Seq), h.Topic, strconv.Itoa(h.Partition))
	}
}

// Run publishes every interval until ctx ends, then once more.
func (p *headPublisher) Run(ctx context.Context) error {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			p.publish(ctx)
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := p.publish(fctx); err != nil {
				return fmt.Errorf("audit heads: last publication: %w", err)
			}
			return nil
		}
	}
}

// publish writes the heads that changed since the last success.
func (p *headPublisher) publish(ctx context.Context) error {
	var (
		heads []clickhouse.Head
		msgs  []kafka.Message
	)
	for _, h := range p.src.Heads() {
		if p.sent[h.Key()] == h {
			continue
		}
		v, err := json.Marshal(h)
		if err != nil {
			return err
		}
		heads = append(heads, h)
		msgs = append(msgs, kafka.Message{Key: []byte(h.Key()), Value: v})
	}
	if len(heads) == 0 {
		return nil
	}
	if p.w != nil {
		if err := p.w.WriteMessages(ctx, msgs...); err != nil {
			p.failures.Inc()
			p.log.Warn("audit heads: publication failed, retrying at the next interval", "topic", p.topic, "err", err)
			return err
		}
		p.published.SetToCurrentTime()
	}
	for _, h := range heads {
		p.sent[h.Key()] = h
		p.log.Info("audit chain head", "topic", h.Topic, "partition", h.Partition, "seq", h.Seq, "hash", h.Hash, "published_to", p.topic)
	}
	return nil
}

// Close releases the Kafka connections.
func (p *headPublisher) Close() error {
	if p.w == nil {
		return nil
	}
	err := p.w.Close()
	p.tr.CloseIdleConnections()
	return err
}

// prepareHeadsTopic creates the heads topic (one partition, compacted)
// when it does not exist, and warns when an existing one is not compacted.
func prepareHeadsTopic(ctx context.Context, kc detector.RuntimeConfig, tr *kafka.Transport, topic string, log *slog.Logger) error {
	cl := &kafka.Client{Addr: kafka.TCP(kc.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("outputs.clickhouse.audit_heads: kafka brokers %v: metadata of topic %s: %w", kc.Brokers, topic, err)
	}
	exists := len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0
	if !exists {
		resp, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
			Topic: topic, NumPartitions: 1, ReplicationFactor: -1,
			ConfigEntries: []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}},
		}}})
		if err == nil {
			err = resp.Errors[topic]
		}
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("outputs.clickhouse.audit_heads.topic: %s does not exist and creating it failed (create it with cleanup.policy=compact, or let vigil's principal CREATE it): %w", topic, err)
		}
		if err == nil {
			log.Info("created the audit heads topic (compacted)", "topic", topic)
		}
		// Wait for the brokers to serve it, so the first publication finds it.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for {
			md, err := cl.Metadata(wctx, &kafka.MetadataRequest{Topics: []string{topic}})
			if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
				break
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("outputs.clickhouse.audit_heads.topic: %s was created but the brokers do not serve it: %w", topic, wctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	resp, err := cl.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"cleanup.policy"},
	}}})
	if err != nil || len(resp.Resources) == 0 || resp.Resources[0].Error != nil {
		log.Debug("kafka: could not read the audit heads topic's cleanup.policy", "topic", topic, "err", err)
		return nil
	}
	for _, e := range resp.Resources[0].ConfigEntries {
		if e.ConfigName == "cleanup.policy" && !strings.Contains(e.ConfigValue, "compact") {
			log.Warn("the audit heads topic is not compacted: retention may delete the only record of a chain's head; set cleanup.policy=compact",
				"topic", topic, "cleanup.policy", e.ConfigValue)
		}
	}
	return nil
}

// readHeadsTopic reads every head the topic holds, partition by partition
// up to the ends it has now (compaction keeps at least the last per chain).
func readHeadsTopic(ctx context.Context, kc detector.RuntimeConfig, topic string) ([]clickhouse.Head, error) {
	d, err := kc.Dialer()
	if err != nil {
		return nil, err
	}
	tr := &kafka.Transport{DialTimeout: kc.DialTimeout, ClientID: kc.ClientID, TLS: d.TLS, SASL: d.SASLMechanism}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(kc.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err == nil && (len(md.Topics) != 1 || md.Topics[0].Error != nil) {
		err = errors.New("no such topic")
		if len(md.Topics) == 1 {
			err = md.Topics[0].Error
		}
	}
	if err != nil {
		return nil, fmt.Errorf("heads topic %s: %w", topic, err)
	}
	var req []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		req = append(req, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	offs, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, fmt.Errorf("heads topic %s: offsets: %w", topic, err)
	}
	var heads []clickhouse.Head
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("heads topic %s partition %d: %w", topic, po.Partition, po.Error)
		}
		if po.FirstOffset >= po.LastOffset {
			continue
		}
		rd := kafka.NewReader(kafka.ReaderConfig{Brokers: kc.Brokers, Topic: topic, Partition: po.Partition, Dialer: d, MaxWait: 100 * time.Millisecond})
		if err := rd.SetOffset(po.FirstOffset); err != nil {
			rd.Close()
			return nil, err
		}
		for {
			m, err := rd.ReadMessage(ctx)
			if err != nil {
				rd.Close()
				return nil, fmt.Errorf("heads topic %s partition %d: %w", topic, po.Partition, err)
			}
			if m.Value != nil { // a tombstone deletes nothing here
				h, err := parseHead(m.Value)
				if err != nil {
					rd.Close()
					return nil, fmt.Errorf("heads topic %s partition %d offset %d: %w", topic, po.Partition, m.Offset, err)
				}
				heads = append(heads, h)
			}
			if m.Offset >= po.LastOffset-1 {
				break
			}
		}
		rd.Close()
	}
	return heads, nil
}

// parseHead decodes one head (a JSONL line or a message value).
func parseHead(b []byte) (clickhouse.Head, error) {
	var h clickhouse.Head
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("not a head: %w", err)
	}
	if h.Topic == "" || h.Seq == 0 || len(h.Hash) != 64 {
		return h, fmt.Errorf("not a head (want topic, partition, seq ≥ 1 and a 64-digit hash): %.200s", b)
	}
	return h, nil
}

// writeHeads writes heads as JSONL.
func writeHeads(w io.Writer, heads []clickhouse.Head) error {
	enc := json.NewEncoder(w)
	for _, h := range heads {
		if err := enc.Encode(h); err != nil {
			return err
		}
	}
	return nil
}
