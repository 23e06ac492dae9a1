package main

import (
	"bytes"
	"os"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParseConfig: the YAML configuration file. Whatever it holds, parsing
// never panics or blows up (aliases, deep nesting); what parses is valid,
// and marshals to YAML that parses to a configuration that marshals the
// same.
//
// Run: go test -run='^$' -fuzz=FuzzParseConfig ./cmd/vigil
func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile("../../deploy/vigil.example.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("detector:\n  allowed_lateness: 30s\n  max_new_agents: 5\n  policy:\n    persist_windows: 3\nkafka:\n  brokers: [a:9092, b:9092]\n"))
	f.Add([]byte("a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"))
	f.Add([]byte("detector: {model: {window_size: 1ms}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseConfig(data)
		if err != nil {
			return
		}
		again, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		cfg2, err := parseConfig(again)
		if err != nil {
			t.Fatalf("re-encoded configuration: %v\n%s", err, again)
		}
		// Compared as YAML: an empty list or map may come back nil.
		if twice, _ := yaml.Marshal(cfg2); !bytes.Equal(again, twice) {
			t.Fatalf("re-encoded configuration differs:\n got %s\nwant %s", twice, again)
		}
	})
}
