package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/alertmanager"
	"github.com/vigil-sec/vigil/sinks/clickhouse"
	kafkasink "github.com/vigil-sec/vigil/sinks/kafka"
	"github.com/vigil-sec/vigil/sinks/stdio"
	"github.com/vigil-sec/vigil/sinks/webhook"
)

// Outputs says where vigil's outputs go. Every batch goes to every enabled
// sink, and an offset is committed only once all of them have it.
type Outputs struct {
	// Stdout writes alerts as JSONL on stdout and dead letters as lines on
	// stderr.
	Stdout bool `yaml:"stdout"`
	// SigningKey signs revocation requests (detector.revocation).
	SigningKey SigningKey `yaml:"signing_key"`
	// Revocations go to this Kafka topic when detector.revocation is enabled.
	Revocations KafkaOutput `yaml:"revocations"`
	// DeadLetters (invalid and late events) go to this Kafka topic.
	DeadLetters KafkaOutput `yaml:"dead_letters"`
	// Alertmanager receives alerts when urls is set.
	Alertmanager alertmanager.Config `yaml:"alertmanager"`
	// ClickHouse stores windows, alerts, revocation requests and the audit
	// chain when enabled.
	ClickHouse ClickHouseOutput `yaml:"clickhouse"`
	// Webhook receives signed revocation requests when url is set.
	Webhook webhook.Config `yaml:"webhook"`
}

// SigningKey names the Ed25519 private key (PEM, PKCS #8; `vigil keygen`)
// and the key id put in requests. The key is read from the file only.
type SigningKey struct {
	File string `yaml:"file"`
	ID   string `yaml:"id"`
}

// KafkaOutput is an output topic on the events topic's cluster.
type KafkaOutput struct {
	Enabled          bool `yaml:"enabled"`
	kafkasink.Config `yaml:",inline"`
}

// ClickHouseOutput is the ClickHouse sink's configuration and a switch,
// and where the heads of its audit chains are published.
type ClickHouseOutput struct {
	Enabled           bool `yaml:"enabled"`
	clickhouse.Config `yaml:",inline"`
	AuditHeads        AuditHeads `yaml:"audit_heads"`
}

// DefaultOutputs returns the defaults: stdout, and dead letters and (when
// revocation is enabled) revocation requests to Kafka.
func DefaultOutputs() Outputs {
	return Outputs{
		Stdout:       true,
		Revocations:  KafkaOutput{Enabled: true, Config: kafkasink.DefaultRevocationsConfig()},
		DeadLetters:  KafkaOutput{Enabled: true, Config: kafkasink.DefaultDeadLettersConfig()},
		Alertmanager: alertmanager.DefaultConfig(),
		ClickHouse:   ClickHouseOutput{Config: clickhouse.DefaultConfig(), AuditHeads: DefaultAuditHeads()},
		Webhook:      webhook.DefaultConfig(),
	}
}

// outputs are the sinks built from Outputs, and what they need to run.
type outputs struct {
	sinks  []detector.Sink
	signer *detector.Signer
	run    []func(context.Context) error // background loops (Alertmanager re-sends)
	close  []func() error
}

// buildOutputs connects the enabled sinks (ClickHouse migrates its schema
// here). On error, what was built is closed.
func buildOutputs(ctx context.Context, cfg Config, stdout, stderr io.Writer, reg prometheus.Registerer, log *slog.Logger) (_ *outputs, err error) {
	o := &outputs{}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	oc := cfg.Outputs
	if oc.Stdout {
		o.sinks = append(o.sinks, stdio.New(stdout, stderr))
	}
	if cfg.Detector.Revocation.Enabled {
		if !oc.Revocations.Enabled && oc.Webhook.URL == "" && !oc.ClickHouse.Enabled {
			return nil, errors.New("outputs: detector.revocation is enabled but no output takes revocation requests: enable outputs.revocations (Kafka), outputs.webhook or outputs.clickhouse")
		}
		if oc.SigningKey.File == "" {
			return nil, errors.New("outputs.signing_key.file: detector.revocation is enabled, so requests must be signed: create a key with `vigil keygen` and name it here")
		}
		if o.signer, err = detector.LoadSigner(oc.SigningKey.ID, oc.SigningKey.File); err != nil {
			return nil, fmt.Errorf("outputs.signing_key: %w", err)
		}
		if oc.Revocations.Enabled {
			s, err := kafkasink.NewRevocations(ctx, cfg.Kafka, oc.Revocations.Config, log)
			if err != nil {
				return nil, fmt.Errorf("outputs.revocations: %w", err)
			}
			o.add(s, s.Close)
		}
		if oc.Webhook.URL != "" {
			s, err := webhook.New(oc.Webhook, reg)
			if err != nil {
				return nil, fmt.Errorf("outputs.webhook: %w", err)
			}
			o.add(s, s.Close)
		}
	}
	if oc.DeadLetters.Enabled {
		s, err := kafkasink.NewDeadLetters(ctx, cfg.Kafka, oc.DeadLetters.Config, log)
		if err != nil {
			return nil, fmt.Errorf("outputs.dead_letters: %w", err)
		}
		o.add(s, s.Close)
	}
	if len(oc.Alertmanager.URLs) > 0 {
		s, err := alertmanager.New(oc.Alertmanager, log)
		if err != nil {
			return nil, fmt.Errorf("outputs.alertmanager: %w", err)
		}
		o.add(s, s.Close)
		o.run = append(o.run, s.Run)
		if reg != nil {
			if err := reg.Register(s); err != nil {
				return nil, fmt.Errorf("outputs.alertmanager: metrics: %w", err)
			}
		}
	}
	if oc.ClickHouse.Enabled {
		s, err := clickhouse.New(ctx, oc.ClickHouse.Config, log)
		if err != nil {
			return nil, fmt.Errorf("outputs.clickhouse: %w", err)
		}
		o.add(s, s.Close)
		p, err := newHeadPublisher(ctx, s, cfg.Kafka, oc.ClickHouse.AuditHeads, reg, log)
		if err != nil {
			return nil, err
		}
		// A sink loop: its last publication follows the runtime's last
		// writes (see start).
		o.run = append(o.run, p.Run)
		o.close = append(o.close, p.Close)
	}
	if len(o.sinks) == 0 {
		return nil, errors.New("outputs: every sink is disabled; enable at least one (stdout, alertmanager, clickhouse, dead_letters)")
	}
	return o, nil
}

func (o *outputs) add(s detector.Sink, close func() error) {
	o.sinks = append(o.sinks, s)
	o.close = append(o.close, close)
}

// start runs the sinks' background loops until ctx ends; wait waits for them.
func (o *outputs) start(ctx context.Context, log *slog.Logger) (wait func()) {
	var wg sync.WaitGroup
	for _, f := range o.run {
		wg.Go(func() {
			if err := f(ctx); err != nil {
				log.Error("sink loop stopped", "err", err)
			}
		})
	}
	return wg.Wait
}

// Close closes every sink.
func (o *outputs) Close() error {
	var errs []error
	for _, c := range o.close {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// Validate checks the enabled outputs' configurations.
func (o Outputs) Validate() error {
	if o.Revocations.Enabled {
		if err := o.Revocations.Config.Validate(); err != nil {
			return fmt.Errorf("outputs.revocations: %w", err)
		}
	}
	if o.DeadLetters.Enabled {
		if err := o.DeadLetters.Config.ValidateDeadLetters(); err != nil {
			return fmt.Errorf("outputs.dead_letters: %w", err)
		}
	}
	if len(o.Alertmanager.URLs) > 0 {
		if err := o.Alertmanager.Validate(); err != nil {
			return fmt.Errorf("outputs.alertmanager: %w", err)
		}
	}
	if o.ClickHouse.Enabled {
		if err := o.ClickHouse.Config.Validate(); err != nil {
			return fmt.Errorf("outputs: %w", err)
		}
	}
	if o.Webhook.URL != "" {
		if err := o.Webhook.Validate(); err != nil {
			return fmt.Errorf("outputs.webhook: %w", err)
		}
	}
	return nil
}
