package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/bench"
	"github.com/vigil-sec/vigil/sim"
)

func TestParseLists(t *testing.T) {
	for _, tc := range []struct {
		seeds, windows string
		wantSeeds      []int64
		wantWindows    []time.Duration
		wantErr        bool
	}{
		{seeds: "1,2,3", windows: "5m", wantSeeds: []int64{1, 2, 3}, wantWindows: []time.Duration{5 * time.Minute}},
		{seeds: " 7 , -1", windows: "1m, 15m", wantSeeds: []int64{7, -1}, wantWindows: []time.Duration{time.Minute, 15 * time.Minute}},
		{seeds: "1,x", windows: "5m", wantErr: true},
		{seeds: "1,1", windows: "5m", wantErr: true},
		{seeds: "", windows: "5m", wantErr: true},
		{seeds: "1", windows: "5m,5m", wantErr: true},
		{seeds: "1", windows: "500ms", wantErr: true}, // below the model's 1s minimum
		{seeds: "1", windows: "5", wantErr: true},
	} {
		t.Run(tc.seeds+"/"+tc.windows, func(t *testing.T) {
			seeds, err1 := parseSeeds(tc.seeds)
			windows, err2 := parseWindows(tc.windows)
			if tc.wantErr {
				if err1 == nil && err2 == nil {
					t.Fatalf("got %v %v, want an error", seeds, windows)
				}
				return
			}
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			if !slices.Equal(seeds, tc.wantSeeds) || !slices.Equal(windows, tc.wantWindows) {
				t.Errorf("got %v %v, want %v %v", seeds, windows, tc.wantSeeds, tc.wantWindows)
			}
		})
	}
}

func TestDetectorConfigLateness(t *testing.T) {
	for _, tc := range []struct {
		window, want time.Duration
	}{
		{time.Second, 500 * time.Millisecond},
		{time.Minute, 30 * time.Second},
		{5 * time.Minute, time.Minute},
		{time.Hour, time.Minute},
	} {
		t.Run(tc.window.String(), func(t *testing.T) {
			dc, err := detectorConfig(tc.window)
			if err != nil {
				t.Fatal(err)
			}
			if dc.AllowedLateness != tc.want || dc.Model.WindowSize != tc.window {
				t.Errorf("lateness %v window %v, want %v %v", dc.AllowedLateness, dc.Model.WindowSize, tc.want, tc.window)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	rows := []row{
		{recall: 0.5, incidents: 24, ttdMedian: time.Minute},
		{recall: 1, incidents: 23, ttdMedian: 3 * time.Minute},
	}
	m := medianRow(time.Minute, rows)
	if m.recall != 0.75 || m.incidents != 23.5 || m.ttdMedian != 2*time.Minute || m.seed != "median" {
		t.Errorf("medianRow = %+v", m)
	}
	if num(m.incidents) != "23.5" || num(24) != "24" {
		t.Errorf("num: %q %q", num(m.incidents), num(24))
	}
}

func TestWindowString(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Minute:  "5m",
		90 * time.Second: "1m30s",
		time.Hour:        "1h",
		90 * time.Minute: "1h30m",
		30 * time.Second: "30s",
	} {
		if got := windowString(d); got != want {
			t.Errorf("windowString(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestCheckTargets(t *testing.T) {
	targets := []target{{"window 5m", 0.8, 0.9}, {"window 1m", 0.7, 0.95}}
	for _, tc := range []struct {
		name             string
		minRecall, minPr float64
		wantMisses       int
	}{
		{"off", 0, 0, 0},
		{"met", 0.7, 0.9, 0},
		{"one recall", 0.75, 0, 1},
		{"both", 0.9, 0.92, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := checkTargets(&stderr, options{minRecall: tc.minRecall, minPrec: tc.minPr}, targets)
			misses := strings.Count(stderr.String(), "\n")
			if misses != tc.wantMisses || (misses > 0) != errors.Is(err, errBelowTarget) {
				t.Errorf("%d misses, err %v; want %d\n%s", misses, err, tc.wantMisses, stderr.String())
			}
		})
	}
}

// TestEvaluateFiles scores a small simulation's truth against its own malicious
// incidents turned into alerts, with and without the events file.
func TestEvaluateFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents = 12, 2, 1, 7
	events := createFile(t, filepath.Join(dir, "events.jsonl"))
	truth := createFile(t, filepath.Join(dir, "truth.jsonl"))
	st, err := sim.Generate(cfg, events, truth)
	if err != nil {
		t.Fatal(err)
	}
	closeFile(t, events)
	closeFile(t, truth)
	incs, err := readFile(truth.Name(), bench.ReadTruth)
	if err != nil {
		t.Fatal(err)
	}
	var alerts bytes.Buffer
	for _, inc := range incs {
		if !inc.Benign {
			alerts.WriteString(`{"alert_id":"` + inc.ID + `","agent_id":"` + inc.AgentID + `","severity":"critical","window_start":"` +
				inc.Start.Format(time.RFC3339Nano) + `","window_end":"` + inc.End.Format(time.RFC3339Nano) + `"}` + "\n")
		}
	}
	alertsPath := filepath.Join(dir, "alerts.jsonl")
	if err := os.WriteFile(alertsPath, alerts.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("events", func(t *testing.T) {
		agents, days, err := countAgentDays(context.Background(), events.Name())
		if err != nil {
			t.Fatal(err)
		}
		if agents != st.Agents || days != float64(cfg.Days) {
			t.Errorf("%d agents over %v days, want %d over %d", agents, days, st.Agents, cfg.Days)
		}
		var stdout, stderr bytes.Buffer
		args := []string{"--truth", truth.Name(), "--alerts", alertsPath, "--events", events.Name(), "--min-recall", "1", "--min-precision", "1"}
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d\n%s%s", code, stdout.String(), stderr.String())
		}
		for _, want := range []string{"recall 100.0%", "precision 100.0%", "false alerts per agent-day  0.0000"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, stdout.String())
			}
		}
	})
	t.Run("no events", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"--truth", truth.Name(), "--alerts", alertsPath}, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d\n%s%s", code, stdout.String(), stderr.String())
		}
		if !strings.Contains(stdout.String(), "false alerts per agent-day  unknown (pass --events FILE") {
			t.Errorf("agent-days not reported unknown:\n%s", stdout.String())
		}
	})
	t.Run("empty alerts", func(t *testing.T) {
		empty := filepath.Join(dir, "empty.jsonl")
		if err := os.WriteFile(empty, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		if code := run([]string{"--truth", truth.Name(), "--alerts", empty, "--min-recall", "0.5"}, &stdout, &stderr); code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, stdout.String(), stderr.String())
		}
		if !strings.Contains(stderr.String(), "recall 0.0% is below --min-recall 50.0%") {
			t.Errorf("stderr: %s", stderr.String())
		}
	})
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--truth", "t.jsonl"},
		{"--alerts", "a.jsonl"},
		{"--truth", "t", "--alerts", "a", "--seeds", "1"},
		{"--events", "e.jsonl"},
		{"--window", "1m"},
		{"--min-recall", "80"},
		{"--seeds", "one"},
		{"extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if code := run(args, io.Discard, io.Discard); code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
		})
	}
}

func createFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func closeFile(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
