// Command quality measures vigil's detection quality against labelled incidents.
//
// With no file flags it runs the whole loop in-process, once per seed and window size:
// sim.Generate writes a simulated fleet (sim.DefaultConfig with that seed) to a
// temporary file, detector.Replay streams it through a detector.Pipeline
// (detector.DefaultConfig with that window size), and bench.Evaluate scores the alerts
// against the simulation's truth with a grace of one window. It prints one summary row
// per run and, per window size, the median over the seeds:
//
//	go run ./bench/quality                                # seeds 1,2,3, window 5m
//	go run ./bench/quality --seeds 1 --windows 1m,5m,15m -v
//	go run ./bench/quality --min-recall 0.8 --min-precision 0.5   # exit 1 below either
//
// With --truth and --alerts it scores existing files instead — the truth from
// `vigil simulate`, the alerts from `vigil replay` — and prints bench.Report's table.
// False alerts per agent-day need the events file (--events) to count distinct agents
// and the span of event time; without it they are reported as unknown.
//
// Each simulation is generated once per seed and replayed for every window size;
// events are streamed through a temporary file, never held in memory, and the file is
// removed when the seed is done (also on SIGINT or SIGTERM). Alerts and the truth are
// held in memory.
//
// For window sizes at or below the detector's default allowed lateness (1m) the
// lateness is lowered to half the window, since the detector requires it to be shorter
// than the window; the simulator delays out-of-order events by at most 20 s.
//
// It does not measure speed beyond the replay rate it reports (events/s, one
// goroutine, including JSON decoding); the speed benchmarks are in bench's
// *_test.go files. It exits 0 on success, 1 on a failure or a missed
// --min-recall/--min-precision target, and 2 on bad usage.
package main
