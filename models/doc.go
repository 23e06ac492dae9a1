// Package models learns what normal looks like for each agent and each peer
// group (agent_class), and scores feature windows against it.
//
// Each feature has the sub-model that suits its kind:
//   - event count: a seasonal model (24 UTC hours × weekday/weekend) of the
//     count per window, empty windows included, so nightly batch jobs and
//     business hours are normal and activity in an agent's silent hours is not;
//   - distinct targets, action-mix distance, bytes, latency, amount: robust
//     (winsorised) decaying mean and variance on log scales, on a fast and a
//     slow time scale; the slow one anchors against slow poisoning ramps;
//   - first-seen targets, actions, credentials, sources: a compound model of
//     how often this agent (and its peer group) sees anything new and how many
//     new things come at once;
//   - deny, error, restricted-data and weak-auth shares: overdispersed
//     binomials with a peer-group prior.
//
// Each becomes a normal-equivalent z-score; Finish combines them into a tail
// probability (max-feature and χ² tests, Bonferroni) and a 0–100 score that
// means the same for every agent. A young agent is scored against its peer
// group from its first window, blending toward its own baseline as it ages;
// an agent young in a cold peer group is not scored (cold-start gating).
// Anomalous windows are learned at a small weight, so an attacker ramping
// slowly does not teach the baseline.
//
// The package is pure: no I/O, goroutines or clock. It does not decide what
// to do with a score (the detector's policy does).
package models
