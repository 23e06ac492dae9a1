// Package sim generates a realistic synthetic fleet of machine identities (AI agents
// and bots in a bank) as a stream of contract-v1 events, together with a truth file
// of labelled malicious incidents and benign changes. It is what `vigil simulate`
// runs and what the detection-quality benchmarks in bench/ score against.
//
// # Fleet
//
// Six agent classes with distinct profiles share the fleet (their number of agents in
// the default fleet of 80 in brackets):
//
//   - payments-bot (16): Mon–Fri 08–18, money-moving calls carrying an amount, few targets.
//   - batch-reconciler (7): a nightly batch 01–04 every day with large payloads, a trickle otherwise.
//   - support-assistant (21): diurnal sinusoid peaking at 14:00, weekends at 40%, customer-record reads.
//   - fraud-scorer (14): flat 24/7 at a high rate.
//   - kyc-agent (14): Mon–Fri 08–18 plus Saturday 09–13, a large restricted-data share.
//   - devops-bot (8): a low base rate with daytime bursts, many distinct actions.
//
// Every agent varies around its class: a lognormal rate scale, its own weighted subset
// of the class's calls (some to specific agents of other classes), occasional rare but
// normal calls shared by the class, its own credentials (one per auth method of the
// class), one to three 10.x source addresses, and per-agent deny and error rates. Event
// times are a Poisson process whose rate is constant on a 15-minute grid. All times are
// UTC, which is also the fleet's local time.
//
// # Truth
//
// Malicious incidents (Benign false) start after the warmup and last 20 minutes to 3
// hours with randomised magnitudes, some subtle: exfiltration, lateral_movement,
// privilege_probing, runaway_volume, off_hours, credential_misuse and unknown_identity
// (a never-seen agent_id claiming an existing class; the incident covers its whole
// life). Every kind occurs at least once when Config.Incidents ≥ 7.
//
// Benign changes (Benign true) must not page anyone: a fleet_deployment (every agent of
// one class moves to a successor service, possibly with renamed actions, and stays;
// agent_id "*"), new_agent (a new instance that behaves like its peers) and
// credential_rotation (a new credential_id with the same auth, attestation and
// addresses). Both end at the end of the simulation.
//
// # Input defects
//
// The event stream is in nondecreasing ts order except for deliberate defects that a
// consumer must tolerate: about 0.1% of events are written 1–20 s late, 0.05% are
// redelivered (an identical line, same event_id) within 5 s, and 0.01% of events are
// followed by an invalid line (bad JSON, missing agent_id or target_id, bad ts, or a
// string bytes_out) carrying a distinct event_id. Defects are counted in Stats and are
// not in the truth file.
//
// # What it does not do
//
// It does not sign events (sig, sig_key), publish to Kafka or pace output in real time:
// it writes as fast as the writer accepts. Memory is bounded by the number of agents,
// not by the number of days. The output is a pure function of the Config: the same
// Config produces byte-identical files (floating-point details may differ across CPU
// architectures, so compare outputs made on the same one).
package sim
