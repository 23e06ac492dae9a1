// Package detector is vigil's runtime: it turns a stream of encoded events
// into alerts.
//
// Pipeline runs decode → dedup → per-agent event-time windows → scoring →
// policy for one ordered stream (one Kafka partition, or a replayed file). It
// owns the agents of that stream and their baselines, the watermark (newest
// event time minus the allowed lateness) that closes windows, and the policy
// that turns scores into alerts: severity from score and persistence, one alert
// per agent, window and kind (stable alert_id), and early decisions that fire
// a critical alert while its window is still open. Replay feeds a JSONL file
// through a Pipeline.
//
// A Pipeline is synchronous and single-owner: the streaming runtime gives
// each partition its own and drives it from one goroutine, so per-agent state
// needs no locks. It does no I/O itself; alerts and window scores leave
// through callbacks.
//
// Runtime is the streaming runtime: a member of a Kafka consumer group
// (kafka-go) with one worker goroutine and one Pipeline per assigned
// partition. Workers hand their outputs (a Batch: alerts, signed revocation
// requests from the Revoker's policy, window records, dead letters) to a
// Sink, the small interface sinks implement, and commit a partition's offset
// only past messages whose output the Sink has made durable (at least once;
// a failing Sink blocks, it never drops) and whose effect on the partition's
// state is checkpointed. Fanout is the Sink that writes to several sinks,
// retrying each on its own, with per-sink metrics. Idle partitions close
// their windows by the wall clock. Idle agents are evicted to a spill file
// (AgentStore) once checkpointed and come back with their next event.
//
// Repartitioner re-keys events that producers did not key by agent_id
// through an internal topic, so each agent's events meet in one worker.
//
// State survives members: each partition's agents, peer groups, watermark
// and duplicate filter are checkpointed (only what changed) to partition P
// of the compacted state topic, and a partition assigned to a member is
// restored from its last checkpoint before it is consumed, so a rebalance,
// a restart or a crash restarts no agent cold and counts no event twice. The
// protocol (records, keys, markers, terms, and what a crash at any point
// leaves) is described in checkpoint.go.
//
// The sinks themselves live in package sinks.
package detector
