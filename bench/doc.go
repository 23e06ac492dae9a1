// Package bench measures vigil: detection quality against the labelled truth of a
// simulated fleet (package sim), and — in its benchmarks — throughput, latency and
// memory.
//
// Detection quality (eval.go): ReadTruth and ReadAlerts load the truth file written by
// sim.Generate and the alert JSONL (alert contract v1) written by `vigil replay`;
// Evaluate matches alerts to incidents by agent and time window and reports recall,
// precision, false alerts per agent-day, time to detect, alerts raised on benign changes
// (fleet deployments, new agents, credential rotations) and the missed incidents;
// Report.WriteTable prints it. The matching rules are documented on Evaluate.
//
// It does not run the detector or the simulator itself: callers (cmd/vigil, tests)
// produce the two files and pass them in. Evaluation is pure and single-threaded.
package bench
