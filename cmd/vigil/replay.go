package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
)

func runReplay(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	input := fs.String("input", "", "JSONL events in event-time order: a file, or - for standard input (required)")
	configPath := fs.String("config", "", "YAML configuration file (default: built-in defaults)")
	window := fs.Duration("window", 0, "feature window size (overrides the config; default 5m)")
	minSev := fs.String("min-severity", "", "least severe alert to print: info, warning or critical (default warning)")
	explain := fs.String("explain", "", "print every window of this agent_id with its score and z-scores to stderr")
	showBad := fs.Int("show-bad", 100, "print at most this many rejected lines to stderr (all are counted)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil replay --input FILE|- [flags]\n\nRuns the detection pipeline on a JSONL event file and prints alerts (contract v1)\nas JSONL on stdout and a summary on stderr.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *input == "" {
		fmt.Fprintln(stderr, "vigil replay: --input is required (a file, or - for standard input)")
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	dc := cfg.Detector
	if *window != 0 {
		dc.Model.WindowSize = *window
		if dc.AllowedLateness >= *window {
			dc.AllowedLateness = *window / 2
			fmt.Fprintf(stderr, "replay: allowed lateness lowered to %v to stay below the %v window\n", dc.AllowedLateness, *window)
		}
	}
	if err := dc.Validate(); err != nil {
		return err
	}
	if *minSev != "" {
		if err := dc.Policy.MinSeverity.UnmarshalText([]byte(*minSev)); err != nil {
			return fmt.Errorf("--min-severity: %w", err)
		}
	}
	var in io.Reader = stdin
	if *input != "-" {
		f, err := os.Open(*input)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer f.Close()
		in = f
	}
	out := bufio.NewWriterSize(stdout, 64<<10)
	enc := json.NewEncoder(out)
	var encErr error
	p, err := detector.NewPipeline(dc, func(a *detector.Alert) {
		if err := enc.Encode(a); err != nil && encErr == nil {
			encErr = err
		}
	})
	if err != nil {
		return err
	}
	if dc.Signatures.Mode != detector.SigOff {
		keys, err := detector.LoadKeys(dc.Signatures.Keyring)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		p.SetKeys(keys)
	}
	if dc.Inventory.File != "" {
		inv, err := detector.LoadInventory(dc.Inventory.File)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		p.SetInventory(inv)
	}
	if *explain != "" {
		p.OnWindow(func(w *detector.WindowScore) {
			if w.AgentID == *explain {
				explainWindow(stderr, w)
			}
		})
	}
	var bad int64
	onBad := func(line int64, err error) {
		bad++
		if bad <= int64(*showBad) {
			fmt.Fprintf(stderr, "line %d: %v\n", line, err)
		} else if bad == int64(*showBad)+1 {
			fmt.Fprintf(stderr, "(further rejected lines are counted, not printed)\n")
		}
	}
	start := time.Now()
	lastProgress := start
	progress := func(lines int64) {
		if now := time.Now(); now.Sub(lastProgress) >= 5*time.Second {
			lastProgress = now
			fmt.Fprintf(stderr, "replay: %d lines, %.0f lines/s\n", lines, float64(lines)/now.Sub(start).Seconds())
		}
	}
	err = detector.Replay(ctx, in, p, onBad, progress)
	elapsed := time.Since(start)
	if ferr := out.Flush(); encErr == nil {
		encErr = ferr
	}
	writeSummary(stderr, p.Stats(), elapsed)
	if err != nil {
		return err
	}
	if encErr != nil {
		return fmt.Errorf("replay: write alerts: %w", encErr)
	}
	return nil
}

func writeSummary(w io.Writer, s detector.Stats, elapsed time.Duration) {
	total := s.Events + s.Duplicates + s.Late
	var invalid int64
	reasons := make([]string, 0, len(s.Invalid))
	for r, n := range s.Invalid {
		invalid += n
		reasons = append(reasons, fmt.Sprintf("%s=%d", r, n))
	}
	sort.Strings(reasons)
	total += invalid
	fmt.Fprintf(w, "summary:\n")
	fmt.Fprintf(w, "  events      %d read: %d scored, %d duplicate, %d late, %d invalid %v\n", total, s.Events, s.Duplicates, s.Late, invalid, reasons)
	if s.Events > 0 {
		fmt.Fprintf(w, "  event time  %s … %s\n", time.Unix(0, s.FirstTS).UTC().Format(time.RFC3339), time.Unix(0, s.MaxTS).UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "  agents      %d in %d peer groups\n", s.Agents, s.Classes)
	fmt.Fprintf(w, "  windows     %d closed (%d cold-start, not scored)\n", s.Windows, s.ColdWindows)
	fmt.Fprintf(w, "  alerts      %d critical, %d warning, %d info (%d fired before their window closed)\n",
		s.Alerts[detector.SeverityCritical], s.Alerts[detector.SeverityWarning], s.Alerts[detector.SeverityInfo], s.Early)
	secs := elapsed.Seconds()
	fmt.Fprintf(w, "  throughput  %.0f events/s (%d in %.2fs)\n", float64(total)/secs, total, secs)
}

func explainWindow(w io.Writer, ws *detector.WindowScore) {
	r := ws.Result
	fmt.Fprintf(w, "%s score=%5.1f %-8s n=%-4.0f", time.Unix(0, ws.Vector.Start).UTC().Format("2006-01-02T15:04"), r.Score, ws.Severity, ws.Vector.Value[0])
	if r.Cold {
		fmt.Fprint(w, " cold")
	}
	for f, z := range r.Z {
		if z >= 1 {
			fmt.Fprintf(w, " %s=%.4g(exp %.4g z %.1f)", features.Feature(f), r.Value[f], r.Expected[f], z)
		}
	}
	fmt.Fprintln(w)
}
