package kafkasink

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/detector"
)

// Default topics.
const (
	DefaultRevocationsTopic = "agent-revocations"
	DefaultDeadLettersTopic = "agent-events-dlq"
)

// Sink names (detector.Sink.Name, the sink label of vigil_sink_* metrics).
const (
	RevocationsName = "kafka-revocations"
	DeadLettersName = "kafka-dlq"
)

// Header names. Revocation requests carry HeaderRequestID, HeaderKeyID,
// HeaderMode, HeaderAction and HeaderContentType; dead letters carry
// HeaderReason, HeaderDetail, the HeaderSource* headers, HeaderValueSize
// and HeaderValueSHA256 and, when their key or value was cut
// (detector.NewDeadLetter), HeaderTruncated ("true") and, when the key
// was, HeaderKeySize and HeaderKeySHA256.
const (
	HeaderRequestID   = "request_id"
	HeaderKeyID       = "kid"
	HeaderMode        = "mode"
	HeaderAction      = "action"
	HeaderContentType = "content-type"

	HeaderReason          = "reason"
	HeaderDetail          = "detail"
	HeaderSourceTopic     = "source_topic"
	HeaderSourcePartition = "source_partition"
	HeaderSourceOffset    = "source_offset"
	HeaderSourceTimestamp = "source_timestamp"
	HeaderValueSize       = "value_size"   // the rejected message's value: bytes
	HeaderValueSHA256     = "value_sha256" // its SHA-256, lowercase hex
	HeaderTruncated       = "truncated"
	HeaderKeySize         = "key_size"
	HeaderKeySHA256       = "key_sha256"
)

// maxDetail bounds the detail header of a dead letter (the error text).
const maxDetail = 1024

// Config configures one output topic. Start from DefaultRevocationsConfig
// or DefaultDeadLettersConfig; the brokers, TLS and SASL come from the
// detector.RuntimeConfig given to the constructor.
type Config struct {
	// Topic is the output topic. Default agent-revocations (revocation
	// requests) or agent-events-dlq (dead letters).
	Topic string `yaml:"topic"`
	// Partitions is the partition count New creates a missing topic with.
	// Default 0: as many as the events topic (kafka.topic), or the broker's
	// default if that does not exist yet. An existing topic is used as it is.
	Partitions int `yaml:"partitions"`
	// ReplicationFactor of a topic New creates. Default 0: the broker's
	// default (default.replication.factor).
	ReplicationFactor int `yaml:"replication_factor"`
	// Linger is how long a partly filled batch waits for messages of other
	// concurrent Writes before it is sent (kafka-go BatchTimeout). Default
	// 2ms: revocation requests and dead letters are latency-sensitive and
	// rare, and a Write always waits for its own messages.
	Linger time.Duration `yaml:"linger"`
	// BatchSize is the most messages sent to one partition in one produce
	// request. Default 1000.
	BatchSize int `yaml:"batch_size"`
	// MaxMessageBytes bounds one produce batch, and so one message (key,
	// value and headers). Keep it at or below the topic's max.message.bytes.
	// Dead letters need at least 32 KiB (MinDeadLetterBytes).
	// A larger message fails the Write permanently. Default 1 MiB (1048576).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// WriteTimeout bounds one produce request. Default 10s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// Attempts is how many times a batch is produced (on errors the brokers
	// call retriable, such as a leader moving) before Write returns the error
	// to its caller, which retries with capped backoff. Default 3.
	Attempts int `yaml:"attempts"`
}

// DefaultRevocationsConfig returns the defaults for revocation requests.
func DefaultRevocationsConfig() Config {
	return Config{Topic: DefaultRevocationsTopic, Linger: 2 * time.Millisecond, BatchSize: 1000,
		MaxMessageBytes: 1 << 20, WriteTimeout: 10 * time.Second, Attempts: 3}
}

// DefaultDeadLettersConfig returns the defaults for dead letters.
func DefaultDeadLettersConfig() Config {
	c := DefaultRevocationsConfig()
	c.Topic = DefaultDeadLettersTopic
	return c
}

// Validate reports the first invalid field, named relative to this struct
// (topic, partitions, ...).
func (c Config) Validate() error {
	bad := func(field, msg string) error { return &detector.ConfigError{Field: field, Msg: msg} }
	switch {
	case !validTopic(c.Topic):
		return bad("topic", fmt.Sprintf("%q: want 1-249 letters, digits, '.', '_' or '-' (not . or ..)", c.Topic))
	case c.Partitions < 0:
		return bad("partitions", "want ≥ 0 (0: as many as the events topic)")
	case c.ReplicationFactor < 0 || c.ReplicationFactor > 32767:
		return bad("replication_factor", "want 0 (the broker's default) to 32767")
	case c.Linger <= 0:
		return bad("linger", "must be > 0")
	case c.BatchSize < 1:
		return bad("batch_size", "want ≥ 1")
	case c.MaxMessageBytes < 1<<10:
		return bad("max_message_bytes", "want ≥ 1024")
	case c.WriteTimeout <= 0:
		return bad("write_timeout", "must be > 0")
	case c.Attempts < 1:
		return bad("attempts", "want ≥ 1")
	}
	return nil
}

// MinDeadLetterBytes is the least MaxMessageBytes of the dead-letter sink,
// and of the dead-letter topic's max.message.bytes: the largest dead letter
// (detector.MaxDeadLetterKey, MaxDeadLetterValue and MaxDeadLetterDetail
// bytes, and the headers) takes under 19 KiB.
const MinDeadLetterBytes = 32 << 10

// ValidateDeadLetters is Validate for the dead-letter sink's Config: it
// also checks that every dead letter fits (MinDeadLetterBytes).
func (c Config) ValidateDeadLetters() error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.MaxMessageBytes < MinDeadLetterBytes {
		return &detector.ConfigError{Field: "max_message_bytes", Msg: fmt.Sprintf("%d: want ≥ %d for dead letters (the largest takes under 19 KiB)", c.MaxMessageBytes, MinDeadLetterBytes)}
	}
	return nil
}

func validTopic(t string) bool {
	if t == "" || t == "." || t == ".." || len(t) > 249 {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Sink writes one kind of output to one Kafka topic. It is safe for
// concurrent use: concurrent Writes share produce requests (see
// Config.Linger). Close it after the last Write.
type Sink struct {
	name  string
	topic string
	tr    *kafka.Transport
	w     *kafka.Writer
	build func(b *detector.Batch) ([]kafka.Message, error)
}

var _ detector.Sink = (*Sink)(nil)

// NewRevocations returns the Sink ("kafka-revocations") that writes a
// batch's revocation requests to cfg.Topic, keyed by agent_id, with the
// signed JSON as value. It connects to kc's brokers with kc's TLS and SASL
// settings (kc must be valid: detector.RuntimeConfig.Validate) and creates
// the topic if it is missing, within ctx; log (nil: none) hears about a
// topic it created.
func NewRevocations(ctx context.Context, kc detector.RuntimeConfig, cfg Config, log *slog.Logger) (*Sink, error) {
	return newSink(ctx, RevocationsName, kc, cfg, log, revocationMessages)
}

// NewDeadLetters returns the Sink ("kafka-dlq") that writes a batch's dead
// letters to cfg.Topic: the rejected message's key and value as the dead
// letter has them (whole, or cut to detector.MaxDeadLetterKey and
// MaxDeadLetterValue bytes), and why, where from and the value's size and
// digest in the headers. Otherwise as NewRevocations.
func NewDeadLetters(ctx context.Context, kc detector.RuntimeConfig, cfg Config, log *slog.Logger) (*Sink, error) {
	if err := cfg.ValidateDeadLetters(); err != nil {
		return nil, fmt.Errorf("%s: %w", DeadLettersName, err)
	}
	return newSink(ctx, DeadLettersName, kc, cfg, log, deadLetterMessages)
}

func newSink(ctx context.Context, name string, kc detector.RuntimeConfig, cfg Config, log *slog.Logger,
	build func(*detector.Batch) ([]kafka.Message, error)) (*Sink, error) {
	if err := kc.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if cfg.Topic == kc.Topic || cfg.Topic == kc.StateTopic {
		return nil, fmt.Errorf("%s: %w", name, &detector.ConfigError{Field: "topic",
			Msg: fmt.Sprintf("%q is vigil's events or state topic: outputs need a topic of their own", cfg.Topic)})
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d, err := kc.Dialer() // reads the TLS files and the SASL password now
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	tr := &kafka.Transport{
		DialTimeout: kc.DialTimeout, ClientID: kc.ClientID,
		TLS: d.TLS, SASL: d.SASLMechanism,
	}
	s := &Sink{name: name, topic: cfg.Topic, tr: tr, build: build}
	if err := s.prepare(ctx, kc, cfg, log); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	s.w = &kafka.Writer{
		Addr:  kafka.TCP(kc.Brokers...),
		Topic: cfg.Topic,
		// CRC32 by key: see the package documentation.
		Balancer:        kafka.CRC32Balancer{},
		MaxAttempts:     cfg.Attempts,
		WriteBackoffMin: 100 * time.Millisecond,
		WriteBackoffMax: time.Second,
		BatchSize:       cfg.BatchSize,
		BatchBytes:      int64(cfg.MaxMessageBytes),
		BatchTimeout:    cfg.Linger,
		WriteTimeout:    cfg.WriteTimeout,
		ReadTimeout:     cfg.WriteTimeout,
		RequiredAcks:    kafka.RequireAll,
		Async:           false,
		Transport:       tr,
	}
	return s, nil
}

// Name returns "kafka-revocations" or "kafka-dlq".
func (s *Sink) Name() string { return s.name }

// Topic returns the topic the sink writes to.
func (s *Sink) Topic() string { return s.topic }

// Write writes the batch's revocation requests (or dead letters) and
// returns when the brokers have acknowledged all of them (acks=all), or with
// an error: then some of them may have been written, and the caller retries
// the whole batch. It returns early, with ctx's error, when ctx ends; what
// was already handed to the brokers may still be written. Safe for
// concurrent use; not after Close.
func (s *Sink) Write(ctx context.Context, b detector.Batch) error {
	msgs, err := s.build(&b)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := s.w.WriteMessages(ctx, msgs...); err != nil {
		return s.writeError(err, len(msgs))
	}
	return nil
}

// Close sends what concurrent Writes still have queued, waits for it, and
// releases the connections. Write must not be called after Close.
func (s *Sink) Close() error {
	err := s.w.Close()
	s.tr.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("%s: close: %w", s.name, err)
	}
	return nil
}

func revocationMessages(b *detector.Batch) ([]kafka.Message, error) {
	if len(b.Revocations) == 0 {
		return nil, nil
	}
	msgs := make([]kafka.Message, len(b.Revocations))
	// One backing array for every message's headers.
	hdrs := make([]kafka.Header, 5*len(b.Revocations))
	for i, rv := range b.Revocations {
		if len(rv.Body) == 0 || rv.Signature == "" {
			return nil, fmt.Errorf("revocation request %s is not signed (no Body): %w", rv.RequestID, detector.ErrPermanent)
		}
		h := hdrs[5*i : 5*i+5 : 5*i+5]
		h[0] = kafka.Header{Key: HeaderRequestID, Value: []byte(rv.RequestID)}
		h[1] = kafka.Header{Key: HeaderKeyID, Value: []byte(rv.KeyID)}
		h[2] = kafka.Header{Key: HeaderMode, Value: []byte(rv.Mode)}
		h[3] = kafka.Header{Key: HeaderAction, Value: []byte(rv.Action)}
		h[4] = kafka.Header{Key: HeaderContentType, Value: []byte("application/json")}
		// rv.Body is never reused (detector.Sink), so the Writer may keep it
		// after a Write that ctx ended.
		msgs[i] = kafka.Message{Key: []byte(rv.AgentID), Value: rv.Body, Headers: h}
	}
	return msgs, nil
}

func deadLetterMessages(b *detector.Batch) ([]kafka.Message, error) {
	if len(b.DeadLetters) == 0 {
		return nil, nil
	}
	msgs := make([]kafka.Message, len(b.DeadLetters))
	hdrs := make([]kafka.Header, 0, 8*len(b.DeadLetters))
	for i := range b.DeadLetters {
		dl := &b.DeadLetters[i]
		start := len(hdrs)
		size, sum := dl.ValueDigest()
		hdrs = append(hdrs,
			kafka.Header{Key: HeaderReason, Value: []byte(dl.Reason)},
			kafka.Header{Key: HeaderDetail, Value: []byte(truncate(dl.Detail, maxDetail))},
			kafka.Header{Key: HeaderSourceTopic, Value: []byte(dl.Topic)},
			kafka.Header{Key: HeaderSourcePartition, Value: strconv.AppendInt(nil, int64(dl.Partition), 10)},
			kafka.Header{Key: HeaderSourceOffset, Value: strconv.AppendInt(nil, dl.Offset, 10)},
		)
		if !dl.Time.IsZero() {
			hdrs = append(hdrs, kafka.Header{Key: HeaderSourceTimestamp, Value: dl.Time.UTC().AppendFormat(nil, time.RFC3339Nano)})
		}
		hdrs = append(hdrs,
			kafka.Header{Key: HeaderValueSize, Value: strconv.AppendInt(nil, int64(size), 10)},
			kafka.Header{Key: HeaderValueSHA256, Value: hex.AppendEncode(nil, sum[:])},
		)
		if dl.Truncated() {
			hdrs = append(hdrs, kafka.Header{Key: HeaderTruncated, Value: []byte("true")})
		}
		if dl.KeyCut {
			hdrs = append(hdrs,
				kafka.Header{Key: HeaderKeySize, Value: strconv.AppendInt(nil, int64(dl.KeySize), 10)},
				kafka.Header{Key: HeaderKeySHA256, Value: hex.AppendEncode(nil, dl.KeySHA256[:])},
			)
		}
		// Copies: a Write that ctx ended leaves its messages with the
		// Writer, which may send them after the caller reused the batch.
		// The message's own timestamp is left to the Writer (now), so the
		// topic's retention counts from when the letter was written.
		msgs[i] = kafka.Message{Key: bytes.Clone(dl.Key), Value: bytes.Clone(dl.Value), Headers: hdrs[start:len(hdrs):len(hdrs)]}
		if msgs[i].Value == nil {
			msgs[i].Value = []byte{} // a null value would be a tombstone
		}
	}
	return msgs, nil
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// writeError describes a failed WriteMessages of n messages, wrapping
// detector.ErrPermanent when retrying cannot help.
func (s *Sink) writeError(err error, n int) error {
	var tooLarge kafka.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		return fmt.Errorf("%s: a %d-byte message is larger than max_message_bytes (raise it, and the topic's max.message.bytes, to write it): %w",
			s.name, messageSize(&tooLarge.Message), detector.ErrPermanent)
	}
	if errors.Is(err, io.ErrClosedPipe) {
		return fmt.Errorf("%s: write after Close: %w", s.name, detector.ErrPermanent)
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		failed, permanent := 0, false
		var first error
		for _, e := range werrs {
			if e == nil {
				continue
			}
			failed++
			if first == nil || (!isPermanent(first) && isPermanent(e)) {
				first = e
			}
			permanent = permanent || isPermanent(e)
		}
		if permanent {
			return fmt.Errorf("%s: %s refused %d of %d messages: %w (%w)", s.name, s.topic, failed, n, first, detector.ErrPermanent)
		}
		return fmt.Errorf("%s: %d of %d messages to %s not acknowledged: %w", s.name, failed, n, s.topic, first)
	}
	if isPermanent(err) {
		return fmt.Errorf("%s: %s: %w (%w)", s.name, s.topic, err, detector.ErrPermanent)
	}
	return fmt.Errorf("%s: %s: %w", s.name, s.topic, err)
}

func messageSize(m *kafka.Message) int {
	n := len(m.Key) + len(m.Value)
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// isPermanent reports whether err is a broker's refusal that retrying
// cannot change: the data or the configuration has to change first.
func isPermanent(err error) bool {
	for _, code := range []kafka.Error{
		kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidRecord, kafka.InvalidTopic,
		kafka.TopicAuthorizationFailed, kafka.ClusterAuthorizationFailed, kafka.SASLAuthenticationFailed,
		kafka.UnsupportedSASLMechanism, kafka.InvalidRequiredAcks, kafka.PolicyViolation,
		kafka.InvalidPartitionNumber, kafka.InvalidReplicationFactor, kafka.InvalidReplicaAssignment,
		kafka.InvalidConfiguration, kafka.UnsupportedForMessageFormat, kafka.UnsupportedCompressionType,
	} {
		if errors.Is(err, code) {
			return true
		}
	}
	return false
}

// createWait bounds how long prepare waits for a topic it created to appear
// in the brokers' metadata.
const createWait = 10 * time.Second

// prepare checks that the topic exists and creates it when it does not.
func (s *Sink) prepare(ctx context.Context, kc detector.RuntimeConfig, cfg Config, log *slog.Logger) error {
	cl := &kafka.Client{Addr: kafka.TCP(kc.Brokers...), Transport: s.tr, Timeout: cfg.WriteTimeout}
	where := fmt.Sprintf("kafka brokers %v", kc.Brokers)
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{s.topic, kc.Topic}})
	if err != nil {
		return s.setupError(fmt.Errorf("%s: metadata of topic %s: %w", where, s.topic, err))
	}
	events := 0
	for _, t := range md.Topics {
		switch {
		case t.Name == kc.Topic && t.Error == nil:
			events = len(t.Partitions)
		case t.Name != s.topic:
		case t.Error == nil && len(t.Partitions) > 0:
			return nil // exists
		case errors.Is(t.Error, kafka.TopicAuthorizationFailed):
			return s.setupError(fmt.Errorf("topic %s: not authorized to describe it (grant vigil's principal DESCRIBE and WRITE on it): %w", s.topic, t.Error))
		}
	}
	parts := cfg.Partitions
	if parts == 0 {
		parts = events
	}
	create := kafka.TopicConfig{Topic: s.topic, NumPartitions: -1, ReplicationFactor: -1}
	if parts > 0 {
		create.NumPartitions = parts
	}
	if cfg.ReplicationFactor > 0 {
		create.ReplicationFactor = cfg.ReplicationFactor
	}
	resp, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{create}})
	if err == nil {
		err = resp.Errors[s.topic]
	}
	if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return s.setupError(fmt.Errorf("topic %s does not exist and creating it failed (create it, or let vigil's principal CREATE it): %w", s.topic, err))
	}
	if err == nil {
		log.Info("created the output topic", "sink", s.name, "topic", s.topic, "partitions", create.NumPartitions, "replication_factor", create.ReplicationFactor)
	}
	// Wait for the brokers to serve the topic, so the first Write finds it.
	wctx, cancel := context.WithTimeout(ctx, createWait)
	defer cancel()
	for {
		md, err := cl.Metadata(wctx, &kafka.MetadataRequest{Topics: []string{s.topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
			return nil
		}
		if err == nil && len(md.Topics) == 1 {
			err = md.Topics[0].Error
		}
		select {
		case <-wctx.Done():
			return s.setupError(fmt.Errorf("topic %s was created but the brokers do not serve it after %v: %w", s.topic, createWait, errors.Join(err, wctx.Err())))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Sink) setupError(err error) error {
	if isPermanent(err) {
		return fmt.Errorf("%s: %w (%w)", s.name, err, detector.ErrPermanent)
	}
	return fmt.Errorf("%s: %w", s.name, err)
}
