// Package alertmanager is the sink that pages analysts: it posts vigil's
// alerts to Alertmanager's API v2 (POST /api/v2/alerts) and keeps them
// firing while the agent stays anomalous, then resolves them.
//
// # Alerts
//
// One Alertmanager alert is one label set: alertname, agent_id,
// agent_class, severity and kind. There is deliberately no per-window label
// (and alert_id is an annotation, not a label): an agent's repeated anomaly
// of one kind is one alert that stays firing, not a page per window. The
// annotations carry the latest vigil alert of that label set: summary, the
// top reasons as text (description) and as JSON (reasons), alert_id,
// window_start, window_end, detected_at, score and baseline; generatorURL
// links to the analyst view (Config.GeneratorURL).
//
// agent_id and agent_class come from events, whose producers choose them
// (up to the decoder's 64 KiB): longer than 512 bytes, they are cut, in the
// labels, the summary, generatorURL and the Sink's memory alike, to their
// start, "…" and 16 hex digits of their SHA-256, so that distinct ids stay
// distinct alerts. Label and annotation values are made valid UTF-8. The
// full id is in ClickHouse and the other sinks.
//
// # Lifecycle
//
// The Sink remembers the alerts it has fired (in memory, at most
// Config.MaxActive). startsAt is the first alert's detected_at (never later
// than the wall clock) and is kept while the alert fires; every send of a
// firing alert sets endsAt = now + ResolveAfter. Run re-sends every firing
// alert each ResendInterval, so Alertmanager never times an alert out while
// vigil still holds it, and an Alertmanager that was down or restarted
// (Alertmanager keeps alerts in memory only) gets them back. An alert
// resolves (sent once more with endsAt = now, then forgotten) when:
//   - a window record of the agent that is later than the alert's window
//     scores below warning and is not cold (the agent is normal again);
//   - a newer alert of the same agent and kind has another severity or
//     class (one alert per agent and kind at a time: an escalation from
//     warning to critical resolves the warning);
//   - no alert refreshed it for ResolveAfter (Run resolves it with endsAt =
//     its last alert + ResolveAfter);
//   - MaxActive alerts are firing and a new one comes: the least recently
//     refreshed is resolved to make room (counted as evicted).
//
// Resolved alerts are re-sent by Run until Alertmanager would have timed
// them out anyway (ResolveAfter after their last firing send), so one that
// missed the resolution learns it. (A retried Write finds its resolutions
// already made and does not send them again: Run does.) If vigil stops, what it had fired
// resolves in Alertmanager by itself within ResolveAfter: the state is not
// checkpointed, and a restarted vigil fires an alert again at the agent's
// next anomalous window.
//
// # Several Alertmanagers
//
// Every batch goes to every configured URL at once (an Alertmanager HA pair
// gossips notifications, not alerts: each member must get every alert). A
// Write is durable once at least one Alertmanager accepted it: analysts are
// paged through the one that is up, and Run's re-send delivers the alerts
// to the other when it is back, within ResendInterval. Failures per URL are
// logged and counted (vigil_alertmanager_posts_total). Only when no
// Alertmanager accepts does Write fail: with an error wrapping
// detector.ErrPermanent when every one rejected the request with a 4xx
// other than 408 or 429 (a bad payload or bad credentials: retrying cannot
// help) or with a TLS failure that the configuration causes
// (detector.IsTLSConfigError: an untrusted server certificate, a client
// certificate the server refuses), else with a plain error, which the
// caller retries. Key, password and token files that other users may read
// are refused (detector.CheckSecretFile).
//
// What it does not do: it has no queue of its own (the caller's retries and
// backpressure are the queue), it does not page on window records or
// revocation requests, and it does not deduplicate across vigil instances
// (each agent belongs to one partition, so to one instance at a time).
package alertmanager
