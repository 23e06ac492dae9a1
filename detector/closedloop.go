package detector

import (
	"encoding/binary"
	"fmt"
	"maps"
	"path"
	"slices"
	"time"

	"github.com/vigil-sec/vigil/models"
)

// The closed loop (issue 12 item 3): vigil checks that what it asked for
// happened. After an enforced request, the credential it named (revoke)
// or its agent (quarantine) should stop appearing in allowed events; one
// still allowed past RevocationPolicy.Grace raises revocation_ineffective
// (critical), and every enforced request ends with an outcome — effective
// (with its time to effect: from the request to the last allowed use) or
// ineffective — written to ClickHouse (revocation_outcomes, decided_by
// vigil) and observed in a histogram. A spent budget raises
// revocation_budget_spent once per budget window and peer group.

// Alert kinds of the closed loop.
const (
	KindRevocationIneffective = "revocation_ineffective"
	KindBudgetSpent           = "revocation_budget_spent"
)

// Outcomes vigil records for its enforced requests.
const (
	OutcomeEffective   = "effective"
	OutcomeIneffective = "ineffective"
)

// Outcome is what became of an enforced revocation request, as vigil saw
// it in the events that followed.
type Outcome struct {
	RequestID string
	AgentID   string
	Outcome   string // OutcomeEffective or OutcomeIneffective
	DecidedAt time.Time
	// TimeToEffect is from the request to the last allowed use after it
	// (0: none); -1 for an ineffective request.
	TimeToEffect time.Duration
	// AllowedAfter counts allowed uses after the request.
	AllowedAfter int
}

// SetRevoker lets the pipeline tell rv of every accepted event while rv
// watches enforced requests (the closed loop). Call before the first
// Process.
func (p *Pipeline) SetRevoker(rv *Revoker) { p.rv = rv }

// watched is an enforced request whose effect vigil checks.
type watched struct {
	requestID, agent, class, cred, action string
	at, exp                               int64 // the request's detected_at and expires_at (Unix ns)
	lastUse                               int64 // the last allowed use after the request; 0: none
	uses                                  int
	alerted                               bool
}

// watchLimit bounds the requests watched per partition (the budget bounds
// them far below).
const watchLimit = 4096

// watchRequest starts watching an enforced request.
func (r *Revoker) watchRequest(rv *Revocation, class string) {
	if len(r.byCred)+len(r.byAgent) >= watchLimit {
		return
	}
	w := &watched{requestID: rv.RequestID, agent: rv.AgentID, class: class, cred: rv.CredentialID, action: rv.Action,
		at: rv.DetectedAt.UnixNano(), exp: rv.ExpiresAt.UnixNano()}
	if rv.Action == ActionQuarantine {
		if r.byAgent == nil {
			r.byAgent = make(map[string]*watched)
		}
		r.byAgent[rv.AgentID] = w
		return
	}
	if r.byCred == nil {
		r.byCred = make(map[string]*watched)
	}
	r.byCred[rv.CredentialID] = w
}

// Watching reports whether any enforced request is being checked (the
// pipeline calls Used only then).
func (r *Revoker) Watching() bool { return r != nil && len(r.byCred)+len(r.byAgent) > 0 }

// Used records an accepted event of agent presenting credential cred at
// event time at (bounded by trusted time), allowed or not, and settles the
// requests whose outcome is known by then.
func (r *Revoker) Used(agent, cred []byte, allowed bool, at int64) {
	if allowed {
		var w *watched
		if len(cred) > 0 {
			w = r.byCred[string(cred)]
		}
		if w == nil {
			w = r.byAgent[string(agent)]
		}
		if w != nil && at > w.at {
			w.uses++
			w.lastUse = max(w.lastUse, at)
			if !w.alerted && at > w.at+int64(r.pol.Grace) {
				w.alerted = true
				r.alerts = append(r.alerts, r.ineffective(w, at))
			}
		}
	}
	if at >= r.nextSettle {
		r.settle(at)
	}
}

// settle ends the watch of requests whose outcome is known at time now:
// effective once a grace period has passed since the request and since the
// last allowed use, ineffective when it expires still in use.
func (r *Revoker) settle(now int64) {
	grace := int64(r.pol.Grace)
	r.nextSettle = now + grace/4
	for _, m := range []map[string]*watched{r.byCred, r.byAgent} {
		for k, w := range m {
			switch {
			case !w.alerted && now > w.at+grace && now > w.lastUse+grace:
				tte := time.Duration(0)
				if w.lastUse > 0 {
					tte = time.Duration(w.lastUse - w.at)
				}
				r.outcomes = append(r.outcomes, Outcome{RequestID: w.requestID, AgentID: w.agent, Outcome: OutcomeEffective,
					DecidedAt: time.Unix(0, now).UTC(), TimeToEffect: tte, AllowedAfter: w.uses})
			case w.alerted && now >= w.exp:
				r.outcomes = append(r.outcomes, Outcome{RequestID: w.requestID, AgentID: w.agent, Outcome: OutcomeIneffective,
					DecidedAt: time.Unix(0, now).UTC(), TimeToEffect: -1, AllowedAfter: w.uses})
			default:
				continue
			}
			delete(m, k)
		}
	}
}

// ineffective is the alert that an enforced request's credential (or
// quarantined agent) is still allowed past the grace period.
func (r *Revoker) ineffective(w *watched, at int64) *Alert {
	start := time.Unix(0, w.at).UTC()
	return &Alert{
		AlertID: AlertID(w.agent, w.at, KindRevocationIneffective), AgentID: w.agent, AgentClass: w.class,
		WindowStart: start, WindowEnd: time.Unix(0, at).UTC(), DetectedAt: time.Unix(0, at).UTC(),
		Score: 100, Severity: SeverityCritical, Kind: KindRevocationIneffective,
		Reasons:  []models.Reason{{Feature: "allowed_after_" + w.action, Value: float64(w.uses), Expected: 0}},
		Baseline: Baseline{Source: "revocation"},
	}
}

// budgetSpent is the alert that the revocation budget is spent for class
// (alert a's group) at time at: once per budget window and group.
func (r *Revoker) budgetSpent(a *Alert, at int64) {
	if until, ok := r.budgetAlerted[a.AgentClass]; ok && at < until {
		return
	}
	if r.budgetAlerted == nil || len(r.budgetAlerted) >= 1024 {
		r.budgetAlerted = make(map[string]int64)
	}
	r.budgetAlerted[a.AgentClass] = at + int64(r.pol.BudgetWindow)
	start := time.Unix(0, at).UTC()
	r.alerts = append(r.alerts, &Alert{
		AlertID: AlertID(FloodAgentID, at-at%int64(r.pol.BudgetWindow), KindBudgetSpent+"/"+a.AgentClass), AgentID: FloodAgentID, AgentClass: a.AgentClass,
		WindowStart: start, WindowEnd: start.Add(r.pol.BudgetWindow), DetectedAt: start,
		Score: 100, Severity: SeverityCritical, Kind: KindBudgetSpent,
		Reasons:  []models.Reason{{Feature: "enforced_requests", Value: float64(len(r.spent)), Expected: float64(r.pol.Budget)}},
		Baseline: Baseline{Source: "revocation"},
	})
}

// TakeAlerts returns the alerts the policy raised (ineffective requests, a
// spent budget) since the last call, and forgets them.
func (r *Revoker) TakeAlerts() []*Alert {
	if r == nil || len(r.alerts) == 0 {
		return nil
	}
	a := r.alerts
	r.alerts = nil
	return a
}

// TakeOutcomes returns the outcomes settled since the last call.
func (r *Revoker) TakeOutcomes() []Outcome {
	if r == nil || len(r.outcomes) == 0 {
		return nil
	}
	o := r.outcomes
	r.outcomes = nil
	return o
}

// appendWatch appends the watched requests (state version 3).
func (r *Revoker) appendWatch(dst []byte) []byte {
	all := make([]*watched, 0, len(r.byCred)+len(r.byAgent))
	for _, m := range []map[string]*watched{r.byCred, r.byAgent} {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			all = append(all, m[k])
		}
	}
	dst = binary.AppendUvarint(dst, uint64(len(all)))
	for _, w := range all {
		for _, s := range []string{w.requestID, w.agent, w.class, w.cred, w.action} {
			dst = appendString(dst, s)
		}
		for _, v := range []int64{w.at, w.exp, w.lastUse, int64(w.uses)} {
			dst = binary.AppendVarint(dst, v)
		}
		dst = appendBool(dst, w.alerted)
	}
	return dst
}

// decodeWatch reads what appendWatch wrote from data and returns the bytes
// it used.
func (r *Revoker) decodeWatch(data []byte) (int, error) {
	bad := fmt.Errorf("%w: revocation policy state: truncated watch", ErrState)
	n, off := binary.Uvarint(data)
	if off <= 0 || n > watchLimit {
		return 0, bad
	}
	for range n {
		var ss [5]string
		for i := range ss {
			s, k, err := readString(data[off:])
			if err != nil {
				return 0, bad
			}
			ss[i], off = s, off+k
		}
		var vs [4]int64
		for i := range vs {
			v, k := binary.Varint(data[off:])
			if k <= 0 {
				return 0, bad
			}
			vs[i], off = v, off+k
		}
		if off >= len(data) || data[off] > 1 {
			return 0, bad
		}
		w := &watched{requestID: ss[0], agent: ss[1], class: ss[2], cred: ss[3], action: ss[4],
			at: vs[0], exp: vs[1], lastUse: vs[2], uses: int(vs[3]), alerted: data[off] == 1}
		off++
		rv := &Revocation{RequestID: w.requestID, AgentID: w.agent, CredentialID: w.cred, Action: w.action,
			DetectedAt: time.Unix(0, w.at), ExpiresAt: time.Unix(0, w.exp)}
		r.watchRequest(rv, w.class)
		if w.action == ActionQuarantine {
			*r.byAgent[w.agent] = *w
		} else {
			*r.byCred[w.cred] = *w
		}
	}
	return off, nil
}

// AllowEntry is an agent pattern the policy never revokes, with why and
// until when: an exception without an owner's reason and an end date is
// how a fleet's protection erodes.
type AllowEntry struct {
	Agent   string    `yaml:"agent"` // path.Match pattern on agent_id
	Reason  string    `yaml:"reason"`
	Expires time.Time `yaml:"expires"`
}

func (r *Revoker) allowlisted(agent string, at int64) bool {
	for _, e := range r.pol.Allowlist {
		if at >= e.Expires.UnixNano() {
			continue
		}
		if ok, _ := path.Match(e.Agent, agent); ok {
			return true
		}
	}
	return false
}
