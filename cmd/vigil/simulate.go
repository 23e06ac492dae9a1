package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vigil-sec/vigil/sim"
)

func runSimulate(_ context.Context, args []string, stdout, stderr io.Writer) error {
	d := sim.DefaultConfig()
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "events.jsonl", "events file (JSONL, contract v1), or - for standard output")
	truthPath := fs.String("truth", "truth.jsonl", "truth file: one labelled incident or benign change per line")
	cfg := sim.Config{}
	fs.Int64Var(&cfg.Seed, "seed", d.Seed, "random seed (same seed, same output)")
	fs.IntVar(&cfg.Agents, "agents", d.Agents, "fleet size")
	fs.IntVar(&cfg.Days, "days", d.Days, "simulated days")
	fs.IntVar(&cfg.WarmupDays, "warmup-days", d.WarmupDays, "leading days without incidents")
	fs.IntVar(&cfg.Incidents, "incidents", d.Incidents, "malicious incidents to inject")
	fs.Float64Var(&cfg.Rate, "rate", d.Rate, "multiplier on every agent's event rate")
	start := fs.String("start", d.Start.Format(time.RFC3339), "simulation start (RFC 3339)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil simulate [flags]\n\nWrites a synthetic agent fleet's events with labelled incidents and benign changes.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	t, err := time.Parse(time.RFC3339, *start)
	if err != nil {
		return fmt.Errorf("--start: %w", err)
	}
	cfg.Start = t
	var ew io.Writer = stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return fmt.Errorf("simulate: %w", err)
		}
		defer f.Close()
		ew = f
	}
	tf, err := os.Create(*truthPath)
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	defer tf.Close()
	bw := bufio.NewWriterSize(ew, 1<<20)
	began := time.Now()
	st, err := sim.Generate(cfg, bw, tf)
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("simulate: write events: %w", err)
	}
	if f, ok := ew.(*os.File); ok && f != os.Stdout {
		if err := f.Close(); err != nil {
			return fmt.Errorf("simulate: %w", err)
		}
	}
	if err := tf.Close(); err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	fmt.Fprintf(stderr, "simulate: %d events from %d agents (%d duplicates, %d invalid lines), %d incidents and %d benign changes in %s, in %.1fs\n",
		st.Events, st.Agents, st.Duplicates, st.Invalid, st.Incidents, st.Benign, *truthPath, time.Since(began).Seconds())
	return nil
}
