// Package features turns raw agent-interaction events into per-agent feature
// vectors.
//
// It holds event contract v1 (decode and validate, with precise errors), a
// bounded duplicate filter keyed by event_id (telling redeliveries from
// reused ids by a hash of the content), bounded per-agent and per-class
// "seen" sets for first-seen detection, and the per-agent event-time tumbling
// window accumulators that produce one Vector per agent per window.
//
// The package is pure: no I/O, no goroutines and no wall clock. Time comes from
// the events, so everything here is replayable and golden-testable. It does not
// decide what is anomalous (that is package models) and it does not own the
// watermark or the set of agents (that is package detector).
//
// Identity fields (event_id, agent_id, agent_class, target_id,
// credential_id) become agent keys, alert labels and ClickHouse values, so
// Decode holds them to more than the JSON contract (ReasonBadID): at most
// MaxIDLen (512) bytes, no white space at either end, and no control,
// format (zero-width, bidi), line or paragraph separator characters, nor
// U+FFFD; event_id, agent_id and target_id must not be empty.
//
// The hot path (Decoder.Decode, Dedup.Check, Observe, Window.Add) does not
// allocate in steady state: decoded strings are views into the input line or
// into the decoder's scratch buffer and are valid until the next Decode.
package features
