package detector

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// RuntimeConfig configures the Kafka side of a Runtime: where the events are,
// how the consumer group behaves, and how partition workers pace output and
// offset commits. Start from DefaultRuntimeConfig. Secrets are never fields
// of this struct: the SASL password is read from a file or an environment
// variable named here.
type RuntimeConfig struct {
	// Brokers are the bootstrap brokers, host:port.
	Brokers []string `yaml:"brokers"`
	// Topic carries the agent-interaction events, keyed by agent_id.
	Topic string `yaml:"topic"`
	// Group is the consumer group id shared by every vigil instance.
	Group string `yaml:"group"`
	// StateTopic is the compacted topic that holds each partition's
	// checkpointed state (agents, peer groups, watermark), partition P for
	// events partition P: it must have as many partitions as Topic. Run
	// creates it (cleanup.policy=compact, the broker's default replication)
	// if it does not exist. It belongs to one Group: checkpoints name their
	// group and events topic, and Run stops with an error on another's
	// (each group needs a StateTopic of its own).
	StateTopic string `yaml:"state_topic"`
	// Repartition is for producers that do not key the events by agent_id:
	// a Repartitioner (consumer group Group + "-repartition") copies Topic
	// into RepartitionTopic keyed by agent_id, and the detector consumes
	// RepartitionTopic instead, so each agent's events meet in one worker.
	// StateTopic then pairs with RepartitionTopic (as many partitions).
	// Checkpoints name the topic they were taken on, so switching
	// Repartition on or off needs a new StateTopic. Events of one agent
	// that come from several partitions of Topic interleave in
	// RepartitionTopic: see Repartitioner for how they are merged by event
	// time and when some can still arrive late.
	Repartition bool `yaml:"repartition"`
	// RepartitionTopic is the internal topic of Repartition. Run creates it
	// if it does not exist, with RepartitionPartitions partitions (0: as
	// many as Topic) and RepartitionReplicationFactor replicas (0: the
	// broker's default). Never add partitions to it while it holds
	// events: agents would move to other partitions.
	RepartitionTopic             string `yaml:"repartition_topic"`
	RepartitionPartitions        int    `yaml:"repartition_partitions"`
	RepartitionReplicationFactor int    `yaml:"repartition_replication_factor"`
	// ClientID identifies vigil to the brokers (logs, quotas).
	ClientID string `yaml:"client_id"`
	// StartOffset is where a partition without a committed offset starts:
	// earliest or latest.
	StartOffset string `yaml:"start_offset"`
	// IdleTimeout: a partition that receives nothing for this long (wall
	// clock), and whose broker confirms that nothing is left to read (asked
	// at most every IdleTimeout/2), advances its event-time clock with the
	// wall clock, so its open windows still close.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// CheckpointInterval is how often a partition checkpoints its state to
	// StateTopic and then commits its offset (never past output that is not
	// yet written). It bounds what a crash makes the next owner reprocess.
	// Partitions also checkpoint when they leave this member.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// MaxBatch is how many messages a partition processes before it writes
	// the alerts and dead letters they produced, even while backlogged.
	MaxBatch int `yaml:"max_batch"`
	// FlushInterval bounds how long window records wait to be written
	// while a partition is caught up (alerts, revocation requests and dead
	// letters never wait), so sinks get batches rather than single rows.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// RetryBackoff and MaxRetryBackoff bound the capped exponential backoff
	// between retries of a failing sink. A failing sink blocks its partition.
	RetryBackoff    time.Duration `yaml:"retry_backoff"`
	MaxRetryBackoff time.Duration `yaml:"max_retry_backoff"`
	// ShutdownTimeout bounds how long a partition worker keeps trying to
	// write its last output and checkpoint when it stops (rebalance or
	// shutdown). What is still unwritten then is not committed: the
	// partition's next owner reprocesses it from the last checkpoint. Must
	// be below RebalanceTimeout.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// FetchMaxWait bounds how long a fetch waits at the broker for new data
	// (kafka-go asks the broker for 3/4 of it below 1s, and for it minus 1s
	// above: keep it below 1s, or at 2s or more). Stopping a partition
	// waits for the fetch in flight.
	FetchMaxWait time.Duration `yaml:"fetch_max_wait"`
	// FetchMaxBytes bounds one fetch response.
	FetchMaxBytes int `yaml:"fetch_max_bytes"`
	// Consumer group timing (see Kafka's session.timeout.ms,
	// heartbeat.interval.ms, max.poll.interval.ms / rebalance timeout).
	SessionTimeout    time.Duration `yaml:"session_timeout"`
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	RebalanceTimeout  time.Duration `yaml:"rebalance_timeout"`
	// JoinBackoff is the pause before rejoining the group after an error.
	JoinBackoff time.Duration `yaml:"join_backoff"`
	// DialTimeout bounds connecting (and TLS/SASL handshakes) to a broker.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// TLS for connections to the brokers.
	TLS TLSConfig `yaml:"tls"`
	// SASL authentication.
	SASL SASLConfig `yaml:"sasl"`
}

// TLSConfig configures TLS to the brokers.
type TLSConfig struct {
	// Enabled turns TLS on (with the system roots unless CAFile is set).
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the CAs that sign the brokers' certificates.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and key (mTLS).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the brokers' certificates.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables certificate verification (tests only).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASLConfig configures SASL authentication. The password comes from
// PasswordFile or from the environment variable PasswordEnv, never from the
// configuration file or the command line.
type SASLConfig struct {
	// Mechanism: "" (none), PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	// PasswordFile holds the password (trailing newline ignored).
	PasswordFile string `yaml:"password_file"`
	// PasswordEnv names the environment variable holding the password.
	PasswordEnv string `yaml:"password_env"`
}

// SASL mechanisms.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// DefaultRuntimeConfig returns the defaults: the local development broker
// (`vigil devbroker`), topic agent-events, group vigil, state in
// vigil-state, checkpoints every 10s.
func DefaultRuntimeConfig() RuntimeConfig {
	return RuntimeConfig{
		Brokers:            []string{"127.0.0.1:9092"},
		Topic:              "agent-events",
		Group:              "vigil",
		StateTopic:         "vigil-state",
		RepartitionTopic:   "vigil-repartition",
		ClientID:           "vigil",
		StartOffset:        "earliest",
		IdleTimeout:        30 * time.Second,
		CheckpointInterval: 10 * time.Second,
		MaxBatch:           4096,
		FlushInterval:      time.Second,
		RetryBackoff:       100 * time.Millisecond,
		MaxRetryBackoff:    10 * time.Second,
		ShutdownTimeout:    10 * time.Second,
		FetchMaxWait:       500 * time.Millisecond,
		FetchMaxBytes:      1 << 20,
		SessionTimeout:     30 * time.Second,
		HeartbeatInterval:  3 * time.Second,
		RebalanceTimeout:   30 * time.Second,
		JoinBackoff:        2 * time.Second,
		DialTimeout:        10 * time.Second,
	}
}

// Validate reports the first invalid field, named as in the configuration
// file (kafka.*).
func (c RuntimeConfig) Validate() error {
	bad := func(field, msg string) error { return &ConfigError{Field: "kafka." + field, Msg: msg} }
	if len(c.Brokers) == 0 {
		return bad("brokers", "at least one host:port is required")
	}
	for _, b := range c.Brokers {
		host, port, err := net.SplitHostPort(b)
		if err != nil || host == "" {
			return bad("brokers", fmt.Sprintf("%q: want host:port", b))
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return bad("brokers", fmt.Sprintf("%q: port must be 1-65535", b))
		}
	}
	if err := validTopic(c.Topic); err != "" {
		return bad("topic", err)
	}
	if c.Group == "" {
		return bad("group", "must not be empty")
	}
	if err := validTopic(c.StateTopic); err != "" {
		return bad("state_topic", err)
	}
	if c.StateTopic == c.Topic {
		return bad("state_topic", fmt.Sprintf("%q is the events topic: the state needs a topic of its own", c.StateTopic))
	}
	if err := c.validateRepartition(c.Repartition); err != nil {
		return err
	}
	if c.StartOffset != "earliest" && c.StartOffset != "latest" {
		return bad("start_offset", fmt.Sprintf("%q: want earliest or latest", c.StartOffset))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"idle_timeout", c.IdleTimeout}, {"checkpoint_interval", c.CheckpointInterval},
		{"retry_backoff", c.RetryBackoff}, {"max_retry_backoff", c.MaxRetryBackoff},
		{"shutdown_timeout", c.ShutdownTimeout}, {"fetch_max_wait", c.FetchMaxWait},
		{"session_timeout", c.SessionTimeout}, {"heartbeat_interval", c.HeartbeatInterval},
		{"rebalance_timeout", c.RebalanceTimeout}, {"join_backoff", c.JoinBackoff},
		{"dial_timeout", c.DialTimeout}, {"flush_interval", c.FlushInterval},
	} {
		if d.v <= 0 {
			return bad(d.name, "must be > 0")
		}
	}
	switch {
	case c.MaxBatch < 1:
		return bad("max_batch", "want ≥ 1")
	case c.FetchMaxWait >= time.Second && c.FetchMaxWait < 2*time.Second:
		return bad("fetch_max_wait", fmt.Sprintf("%v: want below 1s, or 2s or more (kafka-go subtracts 1s of round trip from waits of 1s and more)", c.FetchMaxWait))
	case c.FetchMaxBytes < 1<<10:
		return bad("fetch_max_bytes", "want ≥ 1024")
	case c.MaxRetryBackoff < c.RetryBackoff:
		return bad("max_retry_backoff", fmt.Sprintf("%v is below retry_backoff %v", c.MaxRetryBackoff, c.RetryBackoff))
	case c.HeartbeatInterval >= c.SessionTimeout:
		return bad("heartbeat_interval", fmt.Sprintf("%v: want below session_timeout %v (a third of it is usual)", c.HeartbeatInterval, c.SessionTimeout))
	case c.ShutdownTimeout >= c.RebalanceTimeout:
		return bad("shutdown_timeout", fmt.Sprintf("%v: want below rebalance_timeout %v, or the group evicts this member while it flushes", c.ShutdownTimeout, c.RebalanceTimeout))
	case c.TLS.CertFile != "" && c.TLS.KeyFile == "", c.TLS.CertFile == "" && c.TLS.KeyFile != "":
		return bad("tls.cert_file", "cert_file and key_file go together")
	case !c.TLS.Enabled && (c.TLS.CAFile != "" || c.TLS.CertFile != "" || c.TLS.ServerName != "" || c.TLS.InsecureSkipVerify):
		return bad("tls.enabled", "TLS files or options are set but tls.enabled is false")
	}
	s := c.SASL
	switch s.Mechanism {
	case "":
		if s.Username != "" || s.PasswordFile != "" || s.PasswordEnv != "" {
			return bad("sasl.mechanism", "SASL credentials are set but no mechanism: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
		}
		return nil
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
	default:
		return bad("sasl.mechanism", fmt.Sprintf("%q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", s.Mechanism))
	}
	switch {
	case s.Username == "":
		return bad("sasl.username", "required with a SASL mechanism")
	case (s.PasswordFile == "") == (s.PasswordEnv == ""):
		return bad("sasl.password_file", "set exactly one of sasl.password_file and sasl.password_env (passwords are never taken from the command line or this file)")
	}
	return nil
}

// validateRepartition checks the repartition_* fields; with active (the
// Repartitioner runs) also that the internal topic is none of the others.
func (c RuntimeConfig) validateRepartition(active bool) error {
	bad := func(field, msg string) error { return &ConfigError{Field: "kafka." + field, Msg: msg} }
	if err := validTopic(c.RepartitionTopic); err != "" {
		return bad("repartition_topic", err)
	}
	switch {
	case c.RepartitionPartitions < 0:
		return bad("repartition_partitions", "want ≥ 0 (0: as many as kafka.topic)")
	case c.RepartitionReplicationFactor < 0 || c.RepartitionReplicationFactor > 32767:
		return bad("repartition_replication_factor", "want 0 (the broker's default) to 32767")
	case !active:
	case c.RepartitionTopic == c.Topic:
		return bad("repartition_topic", fmt.Sprintf("%q is the events topic: repartitioning needs a topic of its own", c.RepartitionTopic))
	case c.RepartitionTopic == c.StateTopic:
		return bad("repartition_topic", fmt.Sprintf("%q is the state topic: repartitioning needs a topic of its own", c.RepartitionTopic))
	}
	return nil
}

// validTopic returns what is wrong with a Kafka topic name, or "".
func validTopic(t string) string {
	if t == "" || t == "." || t == ".." || len(t) > 249 {
		return fmt.Sprintf("%q: want 1-249 characters, not . or ..", t)
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Sprintf("%q: only letters, digits, '.', '_' and '-' are allowed", t)
		}
	}
	return ""
}

func (c RuntimeConfig) startOffset() int64 {
	if c.StartOffset == "latest" {
		return kafka.LastOffset
	}
	return kafka.FirstOffset
}

// Dialer builds the kafka-go dialer for c: TLS files and the SASL password
// are read now, so a missing file fails at startup. c must be valid.
func (c RuntimeConfig) Dialer() (*kafka.Dialer, error) {
	d := &kafka.Dialer{ClientID: c.ClientID, Timeout: c.DialTimeout, DualStack: true}
	if c.TLS.Enabled {
		tc, err := c.TLS.config()
		if err != nil {
			return nil, err
		}
		d.TLS = tc
	}
	if c.SASL.Mechanism != "" {
		m, err := c.SASL.mechanism()
		if err != nil {
			return nil, err
		}
		d.SASLMechanism = m
	}
	return d, nil
}

func (t TLSConfig) config() (*tls.Config, error) {
	return t.ClientConfig("kafka.tls")
}

// ClientConfig reads the files and returns the client tls.Config (TLS 1.2
// at least), whether or not Enabled is set; field prefixes its errors
// ("kafka.tls"). The key file must pass CheckSecretFile.
func (t TLSConfig) ClientConfig(field string) (*tls.Config, error) {
	return ClientTLS(field, t.CAFile, t.CertFile, t.KeyFile, t.ServerName, t.InsecureSkipVerify)
}

func (s SASLConfig) mechanism() (sasl.Mechanism, error) {
	var pass string
	if s.PasswordFile != "" {
		b, err := ReadSecretFile("kafka.sasl.password_file", s.PasswordFile)
		if err != nil {
			return nil, err
		}
		pass = strings.TrimRight(string(b), "\r\n")
	} else {
		v, ok := os.LookupEnv(s.PasswordEnv)
		if !ok {
			return nil, fmt.Errorf("kafka.sasl.password_env: environment variable %s is not set", s.PasswordEnv)
		}
		pass = v
	}
	if pass == "" {
		return nil, fmt.Errorf("kafka.sasl: the password is empty")
	}
	switch s.Mechanism {
	case SASLPlain:
		return plain.Mechanism{Username: s.Username, Password: pass}, nil
	case SASLScramSHA256, SASLScramSHA512:
		algo := scram.SHA256
		if s.Mechanism == SASLScramSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, s.Username, pass)
		if err != nil {
			return nil, fmt.Errorf("kafka.sasl: %w", err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("kafka.sasl.mechanism: %q is not supported", s.Mechanism)
}
