package sim

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// ErrInvalidConfig is wrapped by every error Generate and Config.Validate return for a
// bad Config; the message names the field.
var ErrInvalidConfig = errors.New("invalid simulation config")

// Incident kinds. The first seven are malicious (Benign false), the last three are
// benign changes (Benign true) that a good detector must not page anyone for.
const (
	KindExfiltration     = "exfiltration"
	KindLateralMovement  = "lateral_movement"
	KindPrivilegeProbing = "privilege_probing"
	KindRunawayVolume    = "runaway_volume"
	KindOffHours         = "off_hours"
	KindCredentialMisuse = "credential_misuse"
	KindUnknownIdentity  = "unknown_identity"

	KindFleetDeployment    = "fleet_deployment"
	KindNewAgent           = "new_agent"
	KindCredentialRotation = "credential_rotation"
)

// MaliciousKinds returns the malicious incident kinds, in a fixed order.
func MaliciousKinds() []string {
	return []string{KindExfiltration, KindLateralMovement, KindPrivilegeProbing,
		KindRunawayVolume, KindOffHours, KindCredentialMisuse, KindUnknownIdentity}
}

// BenignKinds returns the benign change kinds, in a fixed order.
func BenignKinds() []string {
	return []string{KindFleetDeployment, KindNewAgent, KindCredentialRotation}
}

// Config parameterises a simulation. Start from DefaultConfig. Zero Agents, Days,
// Rate or Start select their defaults (zero is meaningless for them); Seed,
// WarmupDays and Incidents are taken literally, so 0 is a valid value.
type Config struct {
	Seed       int64     // random seed; the same Config gives byte-identical output. Default 1.
	Agents     int       // initial fleet size, split over the classes; at least 6. Default 80.
	Days       int       // simulated days. Default 8.
	WarmupDays int       // leading days without incidents or benign changes. Default 3.
	Start      time.Time // start of the simulation (truncated to the millisecond, UTC). Default 2026-03-02T00:00:00Z, a Monday.
	Incidents  int       // number of malicious incidents, spread over kinds, agents and times after the warmup. Default 24.
	Rate       float64   // multiplier on every agent's event rate. Default 1.
}

// DefaultConfig returns the default simulation: 80 agents over 8 days, 3 of them
// warmup, with 24 malicious incidents — roughly 0.75M events.
func DefaultConfig() Config {
	return Config{
		Seed:       1,
		Agents:     80,
		Days:       8,
		WarmupDays: 3,
		Start:      time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC),
		Incidents:  24,
		Rate:       1,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Agents == 0 {
		c.Agents = d.Agents
	}
	if c.Days == 0 {
		c.Days = d.Days
	}
	if c.Rate == 0 {
		c.Rate = d.Rate
	}
	if c.Start.IsZero() {
		c.Start = d.Start
	}
	c.Start = c.Start.UTC().Truncate(time.Millisecond)
	return c
}

// Validate reports the first bad field of c (after defaults are applied), wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("sim: %w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Agents < 6:
		return bad("agents must be at least 6 (one per class), got %d", c.Agents)
	case c.Agents > 100_000:
		return bad("agents must be at most 100000, got %d", c.Agents)
	case c.Days < 0 || c.Days > 3660:
		return bad("days must be between 1 and 3660, got %d", c.Days)
	case c.WarmupDays < 0:
		return bad("warmup_days must not be negative, got %d", c.WarmupDays)
	case c.Incidents < 0:
		return bad("incidents must not be negative, got %d", c.Incidents)
	case c.Incidents > 0 && c.WarmupDays >= c.Days:
		return bad("warmup_days (%d) must be less than days (%d) to place incidents; lower warmup_days or set incidents to 0", c.WarmupDays, c.Days)
	case c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0):
		return bad("rate must be a positive number, got %v", c.Rate)
	case c.Start.Year() < 1971 || c.Start.Year() > 9000:
		return bad("start %s is out of range", c.Start.Format(time.RFC3339))
	}
	return nil
}

// Incident is one line of the truth file: a malicious incident or a benign change.
type Incident struct {
	ID          string    `json:"incident_id"`
	Kind        string    `json:"kind"`
	AgentID     string    `json:"agent_id"` // "*" for a fleet_deployment: every agent of AgentClass
	AgentClass  string    `json:"agent_class"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"` // end of the simulation for lasting benign changes
	Benign      bool      `json:"benign"`
	Description string    `json:"description"`
}

// Stats counts what Generate wrote. The events file has Events + Duplicates + Invalid
// lines.
type Stats struct {
	Events     int // valid, distinct events
	Agents     int // distinct agent_ids that emitted or could emit events (fleet, new agents, unknown identities)
	Incidents  int // malicious incidents in the truth file
	Benign     int // benign changes in the truth file
	Invalid    int // deliberately invalid lines (bad JSON, missing field, bad ts, bad type)
	Duplicates int // exact redeliveries of an earlier line (same event_id)
}

// Deliberate input defects, per event.
const (
	pOutOfOrder = 0.001   // event delayed by 1–20 s
	pDuplicate  = 0.0005  // line redelivered within 0–5 s
	pInvalid    = 0.0001  // an extra invalid line
	maxDelayMs  = 20_000  // upper bound of an out-of-order delay
	writeBuffer = 1 << 18 // bytes buffered before each write to events
)

// Generate simulates the fleet described by cfg. It writes the truth file (one Incident
// per line, ordered by start) to truth first, then streams the events as JSONL (event
// contract v1) to events in nondecreasing ts order — except for the deliberate
// out-of-order, duplicate and invalid lines counted in Stats. Memory does not grow with
// cfg.Days: one generator per agent is merged through a heap. The output depends only on
// cfg. Generate is safe for concurrent use with distinct writers.
func Generate(cfg Config, events, truth io.Writer) (Stats, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return Stats{}, err
	}
	p, err := newPlan(cfg)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Agents: len(p.agents)}
	tw := bufio.NewWriter(truth)
	enc := json.NewEncoder(tw)
	for _, inc := range p.truth {
		if inc.Benign {
			st.Benign++
		} else {
			st.Incidents++
		}
		if err := enc.Encode(inc); err != nil {
			return st, fmt.Errorf("sim: write truth: %w", err)
		}
	}
	if err := tw.Flush(); err != nil {
		return st, fmt.Errorf("sim: write truth: %w", err)
	}
	if err := stream(p, events, &st); err != nil {
		return st, fmt.Errorf("sim: write events: %w", err)
	}
	return st, nil
}

// pendingLine is a formatted line held back to be written late (out of order or
// redelivered).
type pendingLine struct {
	release int64 // write it before the first event with ts >= release
	line    []byte
}

// stream merges the agents' event streams and writes them.
func stream(p *plan, events io.Writer, st *Stats) error {
	w := bufio.NewWriterSize(events, writeBuffer)
	rng := newRand(p.cfg.Seed, 0xde1ec7)
	var h agentHeap
	for _, a := range p.agents {
		a.start()
		if a.advance() {
			h = append(h, a)
		}
	}
	h.init()
	var (
		f       formatter
		line    []byte
		pending []pendingLine
	)
	hold := func(release int64, l []byte) {
		pl := pendingLine{release: release, line: append([]byte(nil), l...)}
		i := len(pending)
		pending = append(pending, pl)
		for i > 0 && pending[i-1].release > release { // keep sorted; it is tiny
			pending[i] = pending[i-1]
			i--
		}
		pending[i] = pl
	}
	flush := func(upTo int64) error {
		n := 0
		for n < len(pending) && pending[n].release <= upTo {
			if _, err := w.Write(pending[n].line); err != nil {
				return err
			}
			n++
		}
		if n > 0 {
			pending = append(pending[:0], pending[n:]...)
		}
		return nil
	}
	for len(h) > 0 {
		a := h[0]
		e := &a.ev
		if len(pending) > 0 {
			if err := flush(e.ts); err != nil {
				return err
			}
		}
		line = f.appendEvent(line[:0], e, defectNone)
		st.Events++
		if rng.Float64() < pOutOfOrder {
			hold(e.ts+1000+rng.Int64N(maxDelayMs-1000), line)
		} else if _, err := w.Write(line); err != nil {
			return err
		}
		if rng.Float64() < pDuplicate {
			st.Duplicates++
			hold(e.ts+rng.Int64N(5000), line)
		}
		if rng.Float64() < pInvalid {
			st.Invalid++
			line = f.appendEvent(line[:0], e, defect(1+rng.IntN(int(numDefects)-1)))
			if _, err := w.Write(line); err != nil {
				return err
			}
		}
		if a.advance() {
			h.down(0)
		} else {
			h.pop()
		}
	}
	if err := flush(math.MaxInt64); err != nil {
		return err
	}
	return w.Flush()
}

// agentHeap is a binary min-heap of agents ordered by their next event (ts, then agent
// index, which makes the merge deterministic).
type agentHeap []*agent

func (h agentHeap) less(i, j int) bool {
	if h[i].ev.ts != h[j].ev.ts {
		return h[i].ev.ts < h[j].ev.ts
	}
	return h[i].idx < h[j].idx
}

func (h agentHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h agentHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

func (h *agentHeap) pop() {
	old := *h
	n := len(old) - 1
	old[0] = old[n]
	old[n] = nil
	*h = old[:n]
	h.down(0)
}
