package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vigil-sec/vigil/bench"
	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
)

// errUsage means the usage error was already printed.
var errUsage = errors.New("usage")

// errBelowTarget means a --min-recall or --min-precision target was missed; the
// details were already printed.
var errBelowTarget = errors.New("below target")

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the parsed flags.
type options struct {
	truth, alerts, events string
	window                time.Duration
	seeds                 []int64
	windows               []time.Duration
	verbose               bool
	minRecall, minPrec    float64
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(stderr, "quality:", err)
		}
		return 2
	}
	if o.truth != "" {
		err = evaluateFiles(ctx, o, stdout, stderr)
	} else {
		err = simulateAndEvaluate(ctx, o, stdout, stderr)
	}
	switch {
	case errors.Is(err, errBelowTarget):
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "quality:", err)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("quality", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.truth, "truth", "", "score this truth `FILE` (JSONL from vigil simulate) against --alerts instead of simulating")
	fs.StringVar(&o.alerts, "alerts", "", "with --truth: the alerts `FILE` (JSONL printed by vigil replay)")
	fs.StringVar(&o.events, "events", "", "with --truth: the events `FILE` (JSONL), to count agent-days for false alerts per agent-day")
	fs.DurationVar(&o.window, "window", 5*time.Minute, "with --truth: the detector's window size, used as the matching grace")
	seeds := fs.String("seeds", "1,2,3", "simulation `seeds`, comma-separated")
	windows := fs.String("windows", "5m", "detector window `sizes`, comma-separated")
	fs.BoolVar(&o.verbose, "v", false, "also print the full report of every run")
	fs.Float64Var(&o.minRecall, "min-recall", 0, "exit 1 if the (median) recall is below this fraction, e.g. 0.8 (0: no target)")
	fs.Float64Var(&o.minPrec, "min-precision", 0, "exit 1 if the (median) precision is below this fraction (0: no target)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage:
  go run ./bench/quality [--seeds 1,2,3] [--windows 5m] [-v] [--min-recall X] [--min-precision Y]
      simulate, replay and score in-process, one run per seed and window size
  go run ./bench/quality --truth FILE --alerts FILE [--events FILE] [--window 5m] [--min-recall X] [--min-precision Y]
      score existing files

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, errUsage
	}
	usageErr := func(format string, args ...any) (options, error) {
		fmt.Fprintf(stderr, "quality: "+format+"\n\n", args...)
		fs.Usage()
		return o, errUsage
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if (o.truth == "") != (o.alerts == "") {
		return usageErr("--truth and --alerts go together: pass both to score files, or neither to simulate")
	}
	fileMode := o.truth != ""
	for _, name := range []string{"seeds", "windows", "v"} {
		if fileMode && set[name] {
			return usageErr("--%s applies only when simulating; with --truth and --alerts use --window", name)
		}
	}
	for _, name := range []string{"events", "window"} {
		if !fileMode && set[name] {
			return usageErr("--%s applies only with --truth and --alerts; when simulating use --windows", name)
		}
	}
	for name, v := range map[string]float64{"min-recall": o.minRecall, "min-precision": o.minPrec} {
		if !(v >= 0 && v <= 1) {
			return usageErr("--%s %v: want a fraction between 0 and 1, e.g. 0.8", name, v)
		}
	}
	if fileMode {
		if err := checkWindow(o.window); err != nil {
			return usageErr("--window: %v", err)
		}
		return o, nil
	}
	var err error
	if o.seeds, err = parseSeeds(*seeds); err != nil {
		return usageErr("--seeds: %v", err)
	}
	if o.windows, err = parseWindows(*windows); err != nil {
		return usageErr("--windows: %v", err)
	}
	return o, nil
}

// parseSeeds parses a comma-separated list of distinct integers.
func parseSeeds(s string) ([]int64, error) {
	var out []int64
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer seed", f)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("seed %d is listed twice", n)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseWindows parses a comma-separated list of distinct window sizes.
func parseWindows(s string) ([]time.Duration, error) {
	var out []time.Duration
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		d, err := time.ParseDuration(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration such as 5m", f)
		}
		if err := checkWindow(d); err != nil {
			return nil, err
		}
		if slices.Contains(out, d) {
			return nil, fmt.Errorf("window %v is listed twice", d)
		}
		out = append(out, d)
	}
	return out, nil
}

// checkWindow validates a window size the way the detector will.
func checkWindow(d time.Duration) error {
	if _, err := detectorConfig(d); err != nil {
		return fmt.Errorf("window %v: %w", d, err)
	}
	return nil
}

// detectorConfig is detector.DefaultConfig with the given window size. The allowed
// lateness must be shorter than the window, so for small windows it is lowered to half
// the window.
func detectorConfig(window time.Duration) (detector.Config, error) {
	dc := detector.DefaultConfig()
	dc.Model.WindowSize = window
	if dc.AllowedLateness >= window {
		dc.AllowedLateness = window / 2
	}
	return dc, dc.Validate()
}

// evaluateFiles scores existing truth and alert files and prints the report.
func evaluateFiles(ctx context.Context, o options, stdout, stderr io.Writer) error {
	truth, err := readFile(o.truth, bench.ReadTruth)
	if err != nil {
		return err
	}
	alerts, err := readFile(o.alerts, bench.ReadAlerts)
	if err != nil {
		return err
	}
	var agentDays float64
	if o.events != "" {
		agents, days, err := countAgentDays(ctx, o.events)
		if err != nil {
			return err
		}
		agentDays = float64(agents) * days
		fmt.Fprintf(stderr, "events: %d agents over %.2f days of event time\n", agents, days)
	}
	rep := bench.Evaluate(truth, alerts, o.window, agentDays)
	var buf bytes.Buffer
	if err := rep.WriteTable(&buf); err != nil {
		return err
	}
	table := buf.Bytes()
	if agentDays == 0 {
		table = unknownAgentDays(table)
	}
	if _, err := stdout.Write(table); err != nil {
		return err
	}
	return checkTargets(stderr, o, []target{{"", rep.Recall, rep.Precision}})
}

// readFile opens path and decodes it with read.
func readFile[T any](path string, read func(io.Reader) ([]T, error)) ([]T, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out, err := read(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// unknownAgentDays rewrites the false-alerts-per-agent-day line of a report table, which
// reads 0 when agent-days are not known, to say so. The line's label column keeps its
// width, so the table stays aligned.
func unknownAgentDays(table []byte) []byte {
	const label = "false alerts per agent-day"
	lines := bytes.SplitAfter(table, []byte("\n"))
	for i, l := range lines {
		if !bytes.HasPrefix(l, []byte(label)) {
			continue
		}
		value := len(l) - len(bytes.TrimLeft(l[len(label):], " ")) // where the padding ends
		lines[i] = append(l[:value:value], "unknown (pass --events FILE to count agent-days)\n"...)
	}
	return bytes.Join(lines, nil)
}

// countAgentDays scans an events file for the distinct agent_ids and the span of event
// time, in days rounded up to whole hours (a simulation of N days spans just under N
// days). Lines that do not decode, or lack agent_id or ts, are skipped as the detector
// would reject them.
func countAgentDays(ctx context.Context, path string) (agents int, days float64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(bufio.NewReaderSize(f, 1<<20))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	seen := map[string]struct{}{}
	var first, last time.Time
	for n := 1; sc.Scan(); n++ {
		if n&0xffff == 0 && ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
		var e struct {
			AgentID string    `json:"agent_id"`
			TS      time.Time `json:"ts"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.AgentID == "" || e.TS.IsZero() {
			continue
		}
		seen[e.AgentID] = struct{}{}
		if first.IsZero() || e.TS.Before(first) {
			first = e.TS
		}
		if e.TS.After(last) {
			last = e.TS
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	span := last.Sub(first)
	hours := math.Ceil(span.Hours())
	return len(seen), hours / 24, nil
}

// result is one simulated run: a seed replayed with one window size.
type result struct {
	seed         int64
	window       time.Duration
	rep          bench.Report
	eventsPerSec float64
}

// simulateAndEvaluate runs every seed × window, then prints the summary.
func simulateAndEvaluate(ctx context.Context, o options, stdout, stderr io.Writer) error {
	var results []result
	var runErr error
	for _, seed := range o.seeds {
		rs, err := runSeed(ctx, seed, o.windows, o.verbose, stdout, stderr)
		results = append(results, rs...)
		if err != nil {
			runErr = fmt.Errorf("seed %d: %w", seed, err)
			break
		}
	}
	if len(results) > 0 {
		targets, err := writeSummary(stdout, o.windows, results)
		if err != nil {
			return err
		}
		if runErr == nil {
			return checkTargets(stderr, o, targets)
		}
	}
	return runErr
}

// runSeed simulates one fleet into a temporary file and replays it with each window
// size. It returns the runs completed so far, also on error.
func runSeed(ctx context.Context, seed int64, windows []time.Duration, verbose bool, stdout, stderr io.Writer) (_ []result, err error) {
	cfg := sim.DefaultConfig()
	cfg.Seed = seed
	f, err := os.CreateTemp("", "vigil-quality-*.jsonl")
	if err != nil {
		return nil, err
	}
	defer func() {
		f.Close()
		if rerr := os.Remove(f.Name()); rerr != nil && err == nil {
			err = rerr
		}
	}()

	fmt.Fprintf(stderr, "seed %d: simulating… ", seed)
	began := time.Now()
	var truthBuf bytes.Buffer
	st, err := sim.Generate(cfg, ctxWriter{ctx, f}, &truthBuf)
	if err != nil {
		fmt.Fprintln(stderr)
		return nil, err
	}
	fmt.Fprintf(stderr, "%d events from %d agents, %d incidents, %d benign changes in %.1fs\n",
		st.Events, st.Agents, st.Incidents, st.Benign, time.Since(began).Seconds())
	truth, err := bench.ReadTruth(&truthBuf)
	if err != nil {
		return nil, err
	}
	agentDays := float64(st.Agents) * float64(cfg.Days)

	var out []result
	for _, w := range windows {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return out, err
		}
		fmt.Fprintf(stderr, "seed %d window %s: replaying… ", seed, windowString(w))
		alerts, ps, elapsed, err := replay(ctx, f, w)
		if err != nil {
			fmt.Fprintln(stderr)
			return out, fmt.Errorf("window %s: %w", windowString(w), err)
		}
		lines := ps.Events + ps.Duplicates + ps.Late
		var rejected int64
		for _, n := range ps.Invalid {
			rejected += n
		}
		lines += rejected
		eps := float64(lines) / elapsed.Seconds()
		fmt.Fprintf(stderr, "%d lines (%d duplicate, %d late, %d invalid), %d alerts in %.1fs, %.0f events/s\n",
			lines, ps.Duplicates, ps.Late, rejected, len(alerts), elapsed.Seconds(), eps)

		rep := bench.Evaluate(truth, alerts, w, agentDays)
		out = append(out, result{seed: seed, window: w, rep: rep, eventsPerSec: eps})
		if verbose {
			fmt.Fprintf(stdout, "== seed %d, window %s\n", seed, windowString(w))
			if err := rep.WriteTable(stdout); err != nil {
				return out, err
			}
			fmt.Fprintln(stdout)
		}
	}
	return out, nil
}

// replay runs the events in r through a fresh pipeline with the given window size and
// returns its alerts, its counters and how long the replay took.
func replay(ctx context.Context, r io.Reader, window time.Duration) ([]bench.Alert, detector.Stats, time.Duration, error) {
	dc, err := detectorConfig(window)
	if err != nil {
		return nil, detector.Stats{}, 0, err
	}
	var alerts []bench.Alert
	p, err := detector.NewPipeline(dc, func(a *detector.Alert) {
		alerts = append(alerts, bench.Alert{
			AlertID: a.AlertID, AgentID: a.AgentID, AgentClass: a.AgentClass,
			Kind: a.Kind, Severity: a.Severity.String(), Score: a.Score,
			WindowStart: a.WindowStart, WindowEnd: a.WindowEnd, DetectedAt: a.DetectedAt,
		})
	})
	if err != nil {
		return nil, detector.Stats{}, 0, err
	}
	began := time.Now()
	// Rejected lines are counted in the pipeline's stats; the simulator writes some
	// on purpose.
	err = detector.Replay(ctx, r, p, nil, nil)
	return alerts, p.Stats(), time.Since(began), err
}

// ctxWriter fails writes once ctx ends, which stops sim.Generate on a signal.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(b)
}

// row is one line of the summary: a run, or the median of a window size's runs.
type row struct {
	seed                                                 string
	window                                               time.Duration
	incidents, detected, alerts, benign, benignCritical  float64
	recall, precision, falsePerAgentDay, eventsPerSecond float64
	ttdMedian, ttdP90                                    time.Duration
}

func rowOf(r result) row {
	rep := r.rep
	return row{
		seed: strconv.FormatInt(r.seed, 10), window: r.window,
		incidents: float64(rep.Incidents), detected: float64(rep.Detected), alerts: float64(rep.Alerts),
		benign: float64(rep.BenignAlerts), benignCritical: float64(rep.BenignCritical),
		recall: rep.Recall, precision: rep.Precision, falsePerAgentDay: rep.FalseAlertsPerAgentDay,
		eventsPerSecond: r.eventsPerSec, ttdMedian: rep.TTDMedian, ttdP90: rep.TTDP90,
	}
}

// medianRow is the column-wise median of rows.
func medianRow(window time.Duration, rows []row) row {
	col := func(f func(row) float64) float64 {
		v := make([]float64, len(rows))
		for i, r := range rows {
			v[i] = f(r)
		}
		return median(v)
	}
	dcol := func(f func(row) time.Duration) time.Duration {
		return time.Duration(col(func(r row) float64 { return float64(f(r)) }))
	}
	return row{
		seed: "median", window: window,
		incidents:        col(func(r row) float64 { return r.incidents }),
		detected:         col(func(r row) float64 { return r.detected }),
		alerts:           col(func(r row) float64 { return r.alerts }),
		benign:           col(func(r row) float64 { return r.benign }),
		benignCritical:   col(func(r row) float64 { return r.benignCritical }),
		recall:           col(func(r row) float64 { return r.recall }),
		precision:        col(func(r row) float64 { return r.precision }),
		falsePerAgentDay: col(func(r row) float64 { return r.falsePerAgentDay }),
		eventsPerSecond:  col(func(r row) float64 { return r.eventsPerSecond }),
		ttdMedian:        dcol(func(r row) time.Duration { return r.ttdMedian }),
		ttdP90:           dcol(func(r row) time.Duration { return r.ttdP90 }),
	}
}

// median is the middle value of v, or the mean of the two middle values (0 for none).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// target is a recall and precision to hold against --min-recall and --min-precision.
type target struct {
	what              string // "" or "window 5m"
	recall, precision float64
}

// writeSummary prints one row per run, grouped by window size, each group followed by
// its median over the seeds, and returns those medians as targets.
func writeSummary(w io.Writer, windows []time.Duration, results []result) ([]target, error) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "seed\twindow\tincidents\tdetected\trecall\talerts\tprecision\tfalse/agent-day\tTTD p50\tTTD p90\tbenign alerts\tbenign critical\tevents/s\t")
	var targets []target
	for _, win := range windows {
		var rows []row
		for _, r := range results {
			if r.window == win {
				rows = append(rows, rowOf(r))
			}
		}
		if len(rows) == 0 {
			continue
		}
		m := medianRow(win, rows)
		for _, r := range append(rows, m) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f%%\t%s\t%.1f%%\t%.4f\t%v\t%v\t%s\t%s\t%.0f\t\n",
				r.seed, windowString(r.window), num(r.incidents), num(r.detected), 100*r.recall, num(r.alerts),
				100*r.precision, r.falsePerAgentDay, r.ttdMedian.Round(time.Second), r.ttdP90.Round(time.Second),
				num(r.benign), num(r.benignCritical), r.eventsPerSecond)
		}
		targets = append(targets, target{"window " + windowString(win), m.recall, m.precision})
	}
	return targets, tw.Flush()
}

// windowString formats a window size without trailing zero units: 5m, 1h30m, 90s.
func windowString(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// num formats a count, which a median of an even number of runs may make fractional.
func num(f float64) string {
	if f == math.Trunc(f) {
		return strconv.FormatFloat(f, 'f', 0, 64)
	}
	return strconv.FormatFloat(f, 'f', 1, 64)
}

// checkTargets reports every missed --min-recall or --min-precision target on stderr
// and returns errBelowTarget if there was one.
func checkTargets(stderr io.Writer, o options, targets []target) error {
	missed := false
	miss := func(t target, name string, got, want float64) {
		missed = true
		what := ""
		if t.what != "" { // simulating: the target holds for each window's median
			what = t.what + ": median "
		}
		fmt.Fprintf(stderr, "quality: %s%s %.1f%% is below --min-%s %.1f%%\n", what, name, 100*got, name, 100*want)
	}
	for _, t := range targets {
		if o.minRecall > 0 && t.recall < o.minRecall {
			miss(t, "recall", t.recall, o.minRecall)
		}
		if o.minPrec > 0 && t.precision < o.minPrec {
			miss(t, "precision", t.precision, o.minPrec)
		}
	}
	if missed {
		return errBelowTarget
	}
	return nil
}
