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
// partition. Workers hand alerts and dead letters (rejected events, with
// their reason) to a Sink, the small interface sinks implement, and commit a
// partition's offset only past messages whose output the Sink has made
// durable (at least once; a failing Sink blocks, it never drops). Idle
// partitions close their windows by the wall clock.
//
// Not here yet: state checkpoints (a partition that moves to another member
// restarts its agents cold), eviction of idle agents (memory grows with the
// number of distinct agents), the sinks themselves (package sinks).
package detector
