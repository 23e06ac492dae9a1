package kafkasink

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// These tests run the sinks against kfake, franz-go's in-process
// Kafka-protocol broker, and read what arrived with kafka-go Readers.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const eventsTopic = "agent-events"

// cluster starts a one-broker kfake cluster with a 3-partition events topic
// (and opts) and returns it with its address.
func cluster(t testing.TB, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, eventsTopic)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

func runtimeConfig(addr string) detector.RuntimeConfig {
	kc := detector.DefaultRuntimeConfig()
	kc.Brokers = []string{addr}
	kc.DialTimeout = 2 * time.Second
	return kc
}

// testConfig is cfg with fewer, faster retries.
func testConfig(cfg Config) Config {
	cfg.Attempts = 2
	cfg.WriteTimeout = 2 * time.Second
	return cfg
}

func newRevocations(t testing.TB, addr string) *Sink {
	t.Helper()
	s, err := NewRevocations(context.Background(), runtimeConfig(addr), testConfig(DefaultRevocationsConfig()), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newDeadLetters(t testing.TB, addr string) *Sink {
	t.Helper()
	s, err := NewDeadLetters(context.Background(), runtimeConfig(addr), testConfig(DefaultDeadLettersConfig()), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testSigner(t testing.TB) *detector.Signer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := detector.NewSigner("vigil-test-1", key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// revocation returns a signed request for agent, the n-th for it.
func revocation(t testing.TB, s *detector.Signer, agent string, n int) *detector.Revocation {
	t.Helper()
	ws := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC).Add(time.Duration(n) * 5 * time.Minute)
	alertID := fmt.Sprintf("alert-%s-%d", agent, n)
	rv := &detector.Revocation{
		RequestID: detector.RequestID(alertID, detector.ActionQuarantine), AlertID: alertID,
		AgentID: agent, AgentClass: "payments",
		WindowStart: ws, WindowEnd: ws.Add(5 * time.Minute), DetectedAt: ws.Add(5 * time.Minute),
		Score: 97.5, Severity: detector.SeverityCritical, Kind: "behavior",
		Reasons: []models.Reason{
			{Feature: "distinct_targets", Value: 41, Expected: 3, Z: 9.1, Contribution: 0.6},
			{Feature: "bytes_out", Value: 8.2e6, Expected: 1.1e5, Z: 7.4, Contribution: 0.3},
			{Feature: "deny_ratio", Value: 0.4, Expected: 0.01, Z: 5.2, Contribution: 0.1},
		},
		Baseline:     detector.Baseline{Source: models.SourceAgent, Windows: 288},
		CredentialID: "cred-" + agent, Action: detector.ActionQuarantine, Mode: detector.ModeEnforce, Why: "policy",
		ExpiresAt: ws.Add(time.Hour),
	}
	if err := s.Sign(rv); err != nil {
		t.Fatal(err)
	}
	return rv
}

func header(m kafka.Message, key string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// readAll reads every message of topic, partition by partition, with a
// kafka-go Reader each.
func readAll(t testing.TB, addr, topic string) []kafka.Message {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
		t.Fatalf("metadata of %s: %+v, %v", topic, md, err)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	lo, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for _, p := range lo.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("%s/%d: %v", topic, p.Partition, p.Error)
		}
		if p.LastOffset == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p.Partition, MaxWait: 50 * time.Millisecond})
		for range p.LastOffset {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("read %s/%d: %v", topic, p.Partition, err)
			}
			msgs = append(msgs, m)
		}
		r.Close()
	}
	return msgs
}

// dedupByRequestID is what a consumer of agent-revocations does with
// redelivered requests: it keeps the first message of each request_id.
func dedupByRequestID(msgs []kafka.Message) []kafka.Message {
	seen := make(map[string]bool)
	var out []kafka.Message
	for _, m := range msgs {
		id, _ := header(m, HeaderRequestID)
		if !seen[id] {
			seen[id] = true
			out = append(out, m)
		}
	}
	return out
}

// Revocation requests arrive keyed by agent, with the signed body byte for
// byte and the headers; one agent's requests share a partition and keep
// their order; a batch written twice arrives twice with the same request
// ids, and deduplicating by request_id gives the requests once.
func TestRevocationsArrive(t *testing.T) {
	_, addr := cluster(t)
	s := newRevocations(t, addr)
	if s.Name() != "kafka-revocations" || s.Topic() != "agent-revocations" {
		t.Errorf("Name, Topic = %q, %q", s.Name(), s.Topic())
	}
	signer := testSigner(t)
	keys := map[string]ed25519.PublicKey{signer.KeyID: signer.Public()}
	var rvs []*detector.Revocation
	for i := range 12 {
		rvs = append(rvs, revocation(t, signer, fmt.Sprintf("spiffe://bank.example/agent/bot-%d", i%4), i/4))
	}
	// Other outputs of the batch are not this sink's.
	b := detector.Batch{Topic: eventsTopic, Revocations: rvs, Alerts: []*detector.Alert{{AlertID: "x"}},
		DeadLetters: []detector.DeadLetter{{Value: []byte("x")}}}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), detector.Batch{DeadLetters: b.DeadLetters}); err != nil {
		t.Errorf("a batch without revocations: %v", err)
	}

	got := readAll(t, addr, "agent-revocations")
	if len(got) != len(rvs) {
		t.Fatalf("%d messages, want %d", len(got), len(rvs))
	}
	byID := make(map[string]*detector.Revocation)
	for _, rv := range rvs {
		byID[rv.RequestID] = rv
	}
	partOf := make(map[string]int)
	lastWindow := make(map[string]time.Time)
	for _, m := range got {
		id, _ := header(m, HeaderRequestID)
		rv := byID[id]
		if rv == nil {
			t.Fatalf("message with request_id %q: not written", id)
		}
		if string(m.Key) != rv.AgentID || !bytes.Equal(m.Value, rv.Body) {
			t.Errorf("%s: key %q value %q; want %q and the signed body", id, m.Key, m.Value, rv.AgentID)
		}
		for k, want := range map[string]string{HeaderKeyID: "vigil-test-1", HeaderMode: "enforce", HeaderAction: "quarantine", HeaderContentType: "application/json"} {
			if v, _ := header(m, k); v != want {
				t.Errorf("%s: header %s = %q, want %q", id, k, v, want)
			}
		}
		v, err := detector.VerifyRevocation(m.Value, keys)
		if err != nil || v.RequestID != id {
			t.Errorf("%s: verify: %v, %v", id, v, err)
		}
		if p, ok := partOf[rv.AgentID]; ok && p != m.Partition {
			t.Errorf("agent %s in partitions %d and %d", rv.AgentID, p, m.Partition)
		}
		partOf[rv.AgentID] = m.Partition
		if rv.WindowStart.Before(lastWindow[rv.AgentID]) {
			t.Errorf("agent %s: requests out of order", rv.AgentID)
		}
		lastWindow[rv.AgentID] = rv.WindowStart
	}

	// Redelivery: the caller retries a batch that may have been written.
	if err := s.Write(context.Background(), detector.Batch{Revocations: rvs}); err != nil {
		t.Fatal(err)
	}
	got = readAll(t, addr, "agent-revocations")
	if len(got) != 2*len(rvs) {
		t.Fatalf("after a second write: %d messages, want %d", len(got), 2*len(rvs))
	}
	count := make(map[string]int)
	for _, m := range got {
		id, _ := header(m, HeaderRequestID)
		count[id]++
	}
	for id, n := range count {
		if n != 2 || byID[id] == nil {
			t.Errorf("request_id %s: %d copies", id, n)
		}
	}
	if d := dedupByRequestID(got); len(d) != len(rvs) {
		t.Errorf("deduplicated: %d requests, want %d", len(d), len(rvs))
	}
}

// Dead letters keep the key and value they have byte for byte (a bounded
// one: its cut key and value), a missing key stays missing, and the headers
// say why, where from, and the whole value's size and digest.
func TestDeadLettersArrive(t *testing.T) {
	_, addr := cluster(t)
	s := newDeadLetters(t, addr)
	if s.Name() != "kafka-dlq" || s.Topic() != "agent-events-dlq" {
		t.Errorf("Name, Topic = %q, %q", s.Name(), s.Topic())
	}
	ts := time.Date(2026, 3, 2, 10, 4, 5, 123456789, time.FixedZone("CET", 3600))
	long := strings.Repeat("é", 2000)
	bigKey, bigValue := bytes.Repeat([]byte("k"), 4000), bytes.Repeat([]byte("v"), 1048000)
	dls := []detector.DeadLetter{
		{Topic: eventsTopic, Partition: 2, Offset: 41, Key: []byte("spiffe://bank.example/agent/a"), Value: []byte(`{"event_id":"e1"`),
			Time: ts, Reason: features.ReasonBadJSON, Detail: "unexpected end of JSON input"},
		{Topic: eventsTopic, Partition: 0, Offset: 7, Key: nil, Value: []byte{0xff, 0x00, 0xfe, '\n'},
			Time: ts, Reason: features.ReasonBadJSON, Detail: long},
		{Topic: eventsTopic, Partition: 1, Offset: 1 << 40, Key: []byte("k"), Value: nil, Reason: features.ReasonMissingField, Detail: "agent_id: missing"},
		// As the Runtime bounds a message as large as the broker takes.
		detector.NewDeadLetter(eventsTopic, 2, 99, bigKey, bigValue, ts, features.ReasonTooLarge, "event of 1048000 bytes exceeds the 65536 byte limit"),
	}
	if err := s.Write(context.Background(), detector.Batch{DeadLetters: dls, Revocations: []*detector.Revocation{{RequestID: "not mine"}}}); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, addr, "agent-events-dlq")
	if len(got) != len(dls) {
		t.Fatalf("%d messages, want %d", len(got), len(dls))
	}
	for _, m := range got {
		off, _ := header(m, HeaderSourceOffset)
		var dl *detector.DeadLetter
		for i := range dls {
			if strconv.FormatInt(dls[i].Offset, 10) == off {
				dl = &dls[i]
			}
		}
		if dl == nil {
			t.Fatalf("message with source_offset %q", off)
		}
		if !bytes.Equal(m.Key, dl.Key) || (m.Key == nil) != (dl.Key == nil) || !bytes.Equal(m.Value, dl.Value) {
			t.Errorf("offset %s: key %q value %q; want %q %q", off, m.Key, m.Value, dl.Key, dl.Value)
		}
		wantTS := ""
		if !dl.Time.IsZero() {
			wantTS = "2026-03-02T09:04:05.123456789Z"
		}
		for k, want := range map[string]string{
			HeaderReason: string(dl.Reason), HeaderSourceTopic: eventsTopic,
			HeaderSourcePartition: strconv.Itoa(dl.Partition), HeaderSourceTimestamp: wantTS,
		} {
			if v, _ := header(m, k); v != want {
				t.Errorf("offset %s: header %s = %q, want %q", off, k, v, want)
			}
		}
		size, sum := dl.ValueDigest()
		wantSize, wantSum, wantTrunc := strconv.Itoa(size), hex.EncodeToString(sum[:]), ""
		if dl.Offset == 99 {
			// The original's size and digest, not the cut value's.
			wantSize, wantTrunc = "1048000", "true"
			s := sha256.Sum256(bigValue)
			wantSum = hex.EncodeToString(s[:])
			if len(m.Value) != detector.MaxDeadLetterValue || len(m.Key) != detector.MaxDeadLetterKey {
				t.Errorf("offset 99: key %d, value %d bytes; want cut to %d and %d", len(m.Key), len(m.Value), detector.MaxDeadLetterKey, detector.MaxDeadLetterValue)
			}
			ks := sha256.Sum256(bigKey)
			if v, _ := header(m, HeaderKeySHA256); v != hex.EncodeToString(ks[:]) {
				t.Errorf("offset 99: key_sha256 %q", v)
			}
			if v, _ := header(m, HeaderKeySize); v != "4000" {
				t.Errorf("offset 99: key_size %q", v)
			}
		} else if _, ok := header(m, HeaderKeySize); ok {
			t.Errorf("offset %s: key_size header on an uncut key", off)
		}
		for k, want := range map[string]string{HeaderValueSize: wantSize, HeaderValueSHA256: wantSum, HeaderTruncated: wantTrunc} {
			if v, _ := header(m, k); v != want {
				t.Errorf("offset %s: header %s = %q, want %q", off, k, v, want)
			}
		}
		detail, _ := header(m, HeaderDetail)
		switch {
		case len(dl.Detail) <= maxDetail && detail != dl.Detail:
			t.Errorf("offset %s: detail %q, want %q", off, detail, dl.Detail)
		case len(dl.Detail) > maxDetail && (len(detail) > maxDetail || !strings.HasSuffix(detail, "…") || !strings.HasPrefix(dl.Detail, strings.TrimSuffix(detail, "…"))):
			t.Errorf("offset %s: a long detail is cut to %d bytes: %q", off, len(detail), detail)
		}
	}
}

// While the broker is unreachable a Write fails (it does not pretend the
// batch is written) and retrying it succeeds once the broker is back.
func TestWriteFailsWhileBrokerDownThenSucceeds(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c1, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.SeedTopics(3, eventsTopic))
	if err != nil {
		t.Fatal(err)
	}
	addr := c1.ListenAddrs()[0]
	s := newRevocations(t, addr)
	signer := testSigner(t)
	b := detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0), revocation(t, signer, "b", 0)}}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	c1.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	start := time.Now()
	err = s.Write(ctx, b)
	cancel()
	if err == nil || errors.Is(err, detector.ErrPermanent) {
		t.Fatalf("Write with the broker down: %v, want a (retriable) error", err)
	}
	t.Logf("broker down: Write failed after %v: %v", time.Since(start).Round(time.Millisecond), err)

	// The broker comes back (empty: kfake keeps nothing) where it was.
	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.SeedTopics(3, eventsTopic, "agent-revocations"))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	// Retry as detector.Fanout does.
	start = time.Now()
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.Write(ctx, b)
		cancel()
		if err == nil {
			t.Logf("broker back: Write succeeded after %v, attempt %d", time.Since(start).Round(time.Millisecond), attempt)
			break
		}
		if errors.Is(err, detector.ErrPermanent) || time.Since(start) > 15*time.Second {
			t.Fatalf("Write after the broker is back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := readAll(t, addr, "agent-revocations"); len(got) != 2 {
		t.Errorf("%d messages after the broker came back, want 2", len(got))
	}
}

// Produce errors: retriable ones fail the Write plainly (the caller
// retries, and succeeds when they stop); refusals that retrying cannot fix
// wrap detector.ErrPermanent.
func TestWriteErrors(t *testing.T) {
	signer := testSigner(t)
	for _, tc := range []struct {
		name      string
		err       *kerr.Error
		permanent bool
	}{
		{"not enough replicas", kerr.NotEnoughReplicas, false},
		{"leader moved", kerr.NotLeaderForPartition, false},
		{"not authorized", kerr.TopicAuthorizationFailed, true},
		{"record too large for the broker", kerr.MessageTooLarge, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, addr := cluster(t)
			s := newRevocations(t, addr)
			f := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "agent-revocations", Err: tc.err, Count: -1})
			b := detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0)}}
			err := s.Write(context.Background(), b)
			if err == nil || errors.Is(err, detector.ErrPermanent) != tc.permanent {
				t.Fatalf("Write: %v; want an error, permanent %v", err, tc.permanent)
			}
			f.Remove()
			if err := s.Write(context.Background(), b); err != nil {
				t.Errorf("Write once the broker accepts: %v", err)
			}
		})
	}

	t.Run("message larger than max_message_bytes", func(t *testing.T) {
		// The Runtime's dead letters are bounded (detector.NewDeadLetter)
		// and always fit; one made otherwise may not.
		_, addr := cluster(t)
		cfg := testConfig(DefaultDeadLettersConfig())
		cfg.MaxMessageBytes = MinDeadLetterBytes
		s, err := NewDeadLetters(context.Background(), runtimeConfig(addr), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		err = s.Write(context.Background(), detector.Batch{DeadLetters: []detector.DeadLetter{
			{Value: []byte("small")}, {Value: make([]byte, MinDeadLetterBytes+1), Reason: features.ReasonTooLarge}}})
		if !errors.Is(err, detector.ErrPermanent) || !strings.Contains(err.Error(), "max_message_bytes") {
			t.Errorf("Write: %v; want a permanent error naming max_message_bytes", err)
		}
	})

	t.Run("unsigned request", func(t *testing.T) {
		_, addr := cluster(t)
		s := newRevocations(t, addr)
		err := s.Write(context.Background(), detector.Batch{Revocations: []*detector.Revocation{{RequestID: "r1", AgentID: "a"}}})
		if !errors.Is(err, detector.ErrPermanent) {
			t.Errorf("Write: %v; want a permanent error", err)
		}
	})

	t.Run("after Close", func(t *testing.T) {
		_, addr := cluster(t)
		s := newRevocations(t, addr)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		err := s.Write(context.Background(), detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0)}})
		if !errors.Is(err, detector.ErrPermanent) {
			t.Errorf("Write after Close: %v; want a permanent error", err)
		}
	})
}

// New creates a missing topic with the events topic's partitions (or as
// configured), uses an existing one as it is, and says clearly what to do
// when it cannot.
func TestNewTopics(t *testing.T) {
	partitions := func(t *testing.T, addr, topic string) int {
		t.Helper()
		tr := &kafka.Transport{}
		defer tr.CloseIdleConnections()
		md, err := (&kafka.Client{Addr: kafka.TCP(addr), Transport: tr}).Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
		if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
			t.Fatalf("metadata of %s: %+v, %v", topic, md, err)
		}
		return len(md.Topics[0].Partitions)
	}
	t.Run("created like the events topic", func(t *testing.T) {
		_, addr := cluster(t)
		newRevocations(t, addr)
		newDeadLetters(t, addr)
		if r, d := partitions(t, addr, "agent-revocations"), partitions(t, addr, "agent-events-dlq"); r != 3 || d != 3 {
			t.Errorf("partitions: revocations %d, dead letters %d; want 3 (the events topic's)", r, d)
		}
	})
	t.Run("created as configured", func(t *testing.T) {
		_, addr := cluster(t)
		cfg := testConfig(DefaultDeadLettersConfig())
		cfg.Topic, cfg.Partitions = "my-dlq", 2
		s, err := NewDeadLetters(context.Background(), runtimeConfig(addr), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if n := partitions(t, addr, "my-dlq"); n != 2 {
			t.Errorf("partitions %d, want 2", n)
		}
	})
	t.Run("existing topic kept", func(t *testing.T) {
		_, addr := cluster(t, kfake.SeedTopics(5, "agent-revocations"))
		newRevocations(t, addr)
		if n := partitions(t, addr, "agent-revocations"); n != 5 {
			t.Errorf("partitions %d, want 5", n)
		}
	})
	t.Run("creation refused", func(t *testing.T) {
		c, addr := cluster(t)
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.CreateTopics}, Err: kerr.TopicAuthorizationFailed, Count: -1})
		_, err := NewRevocations(context.Background(), runtimeConfig(addr), testConfig(DefaultRevocationsConfig()), nil)
		if !errors.Is(err, detector.ErrPermanent) || !strings.Contains(err.Error(), "agent-revocations does not exist and creating it failed") {
			t.Errorf("New: %v; want a permanent error saying the topic is missing", err)
		}
	})
	t.Run("broker unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = NewRevocations(ctx, runtimeConfig(addr), testConfig(DefaultRevocationsConfig()), nil)
		if err == nil || errors.Is(err, detector.ErrPermanent) || !strings.Contains(err.Error(), addr) {
			t.Errorf("New: %v; want a retriable error naming the brokers", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"topic", func(c *Config) { c.Topic = "" }},
		{"topic", func(c *Config) { c.Topic = "a b" }},
		{"partitions", func(c *Config) { c.Partitions = -1 }},
		{"replication_factor", func(c *Config) { c.ReplicationFactor = -1 }},
		{"linger", func(c *Config) { c.Linger = 0 }},
		{"batch_size", func(c *Config) { c.BatchSize = 0 }},
		{"max_message_bytes", func(c *Config) { c.MaxMessageBytes = 10 }},
		{"write_timeout", func(c *Config) { c.WriteTimeout = 0 }},
		{"attempts", func(c *Config) { c.Attempts = 0 }},
	} {
		cfg := DefaultRevocationsConfig()
		tc.edit(&cfg)
		var ce *detector.ConfigError
		if err := cfg.Validate(); !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("%s: Validate: %v", tc.field, err)
		}
	}
	for _, cfg := range []Config{DefaultRevocationsConfig(), DefaultDeadLettersConfig()} {
		if err := cfg.Validate(); err != nil {
			t.Errorf("defaults: %v", err)
		}
	}
	// Dead letters need room for the largest one.
	dl := DefaultDeadLettersConfig()
	if err := dl.ValidateDeadLetters(); err != nil {
		t.Errorf("dead-letter defaults: %v", err)
	}
	dl.MaxMessageBytes = MinDeadLetterBytes - 1
	if err := dl.ValidateDeadLetters(); !errors.As(err, new(*detector.ConfigError)) || !strings.Contains(err.Error(), "max_message_bytes") {
		t.Errorf("dead letters with max_message_bytes %d: %v", dl.MaxMessageBytes, err)
	}
	if _, err := NewDeadLetters(context.Background(), runtimeConfig("127.0.0.1:1"), dl, nil); !errors.As(err, new(*detector.ConfigError)) {
		t.Errorf("NewDeadLetters with max_message_bytes %d: %v", dl.MaxMessageBytes, err)
	}
	cfg := DefaultRevocationsConfig()
	cfg.Topic = eventsTopic
	_, err := NewRevocations(context.Background(), runtimeConfig("127.0.0.1:1"), cfg, nil)
	var ce *detector.ConfigError
	if !errors.As(err, &ce) || ce.Field != "topic" {
		t.Errorf("output to the events topic: %v", err)
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcdef", 5, "ab…"},
		{"ééé", 5, "é…"},
		{"ééé", 4, "…"}, // "é" is 2 bytes, "…" 3
		{"ééé", 6, "ééé"},
		{"aééé", 5, "a…"},
	} {
		if got := truncate(tc.in, tc.n); got != tc.want || len(got) > tc.n {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
