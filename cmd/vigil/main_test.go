package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The example configuration documents the defaults: loading it must give
// exactly DefaultConfig.
func TestExampleConfigIsDefault(t *testing.T) {
	cfg, err := loadConfig("../../deploy/vigil.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(cfg, want) {
		t.Errorf("example config differs from the defaults:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"detector:\n  alowed_lateness: 1m\n", "alowed_lateness"},
		{"detector:\n  policy:\n    persist_windows: 0\n", "persist_windows"},
		{"detector:\n  model:\n    window_size: 1ms\n", "window_size"},
	} {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadConfig(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to name %s", tc.yaml, err, tc.want)
		}
	}
}

// simulate → replay end to end through the command line: alerts are valid
// JSON lines, bad lines are reported with their numbers, and the summary
// counts every line.
func TestSimulateReplay(t *testing.T) {
	dir := t.TempDir()
	ev, tr := filepath.Join(dir, "ev.jsonl"), filepath.Join(dir, "truth.jsonl")
	var out, errb bytes.Buffer
	if rc := run([]string{"simulate", "--agents", "12", "--days", "3", "--warmup-days", "2", "--incidents", "2", "--out", ev, "--truth", tr}, nil, &out, &errb); rc != 0 {
		t.Fatalf("simulate: rc %d: %s", rc, errb.String())
	}
	out.Reset()
	errb.Reset()
	if rc := run([]string{"replay", "--input", ev}, nil, &out, &errb); rc != 0 {
		t.Fatalf("replay: rc %d: %s", rc, errb.String())
	}
	if !strings.Contains(errb.String(), "summary:") || !strings.Contains(errb.String(), "events/s") {
		t.Errorf("no summary on stderr:\n%s", errb.String())
	}
	if !strings.Contains(errb.String(), "line ") {
		t.Errorf("simulate writes a few invalid lines; replay reported none:\n%s", errb.String())
	}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, `{"alert_id":"`) {
			t.Errorf("stdout line is not an alert: %.80s", l)
		}
	}
	if rc := run([]string{"replay"}, nil, &out, &errb); rc != 2 {
		t.Errorf("replay without --input: rc %d, want 2", rc)
	}
}
