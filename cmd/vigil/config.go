package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/vigil-sec/vigil/detector"
)

// errUsage means flag parsing already printed what was wrong.
var errUsage = errors.New("usage")

// Config is vigil's one configuration file. Every field is optional; absent
// fields keep the defaults that `vigil config` would print.
type Config struct {
	Detector detector.Config        `yaml:"detector"`
	Kafka    detector.RuntimeConfig `yaml:"kafka"`
	Outputs  Outputs                `yaml:"outputs"`
}

// DefaultConfig returns the configuration used when there is no file.
func DefaultConfig() Config {
	return Config{Detector: detector.DefaultConfig(), Kafka: detector.DefaultRuntimeConfig(), Outputs: DefaultOutputs()}
}

// loadConfig reads path over the defaults; an empty path means defaults only.
// Unknown fields are errors, so a typo never silently keeps a default.
func loadConfig(path string) (Config, error) {
	if path == "" {
		return DefaultConfig(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return DefaultConfig(), fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(b)
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// parseConfig reads a configuration file's contents over the defaults and
// validates the result.
func parseConfig(b []byte) (Config, error) {
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, err
	}
	if err := cfg.Detector.Validate(); err != nil {
		return cfg, err
	}
	if err := cfg.Kafka.Validate(); err != nil {
		return cfg, err
	}
	if err := cfg.Outputs.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}
