package sim

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// smallConfig is a fleet small enough for fast tests that still has every class and
// every incident kind.
func smallConfig() Config {
	c := DefaultConfig()
	c.Agents = 12
	c.Days = 3
	c.WarmupDays = 1
	c.Incidents = 8
	return c
}

// ev is a decoded event line. Required fields are pointers to detect their absence.
type ev struct {
	EventID    *string  `json:"event_id"`
	TS         *string  `json:"ts"`
	AgentID    *string  `json:"agent_id"`
	AgentClass string   `json:"agent_class"`
	TargetID   *string  `json:"target_id"`
	Action     *string  `json:"action"`
	Decision   *string  `json:"decision"`
	DataClass  string   `json:"data_class"`
	Status     string   `json:"status"`
	BytesIn    int64    `json:"bytes_in"`
	BytesOut   int64    `json:"bytes_out"`
	LatencyMS  float64  `json:"latency_ms"`
	Amount     *float64 `json:"amount"`
	Credential string   `json:"credential_id"`
	Auth       string   `json:"auth"`
	Attested   bool     `json:"attested"`
	SrcIP      string   `json:"src_ip"`
	t          time.Time
	line       string
}

// id, agent, target, action and decision dereference the required fields.
func (e *ev) id() string       { return *e.EventID }
func (e *ev) agent() string    { return *e.AgentID }
func (e *ev) target() string   { return *e.TargetID }
func (e *ev) action() string   { return *e.Action }
func (e *ev) decision() string { return *e.Decision }

var tsRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// run generates cfg and splits the events output into valid events and invalid lines,
// streaming through a pipe so no large buffer is needed.
func run(t testing.TB, cfg Config) (valid []ev, invalid []string, truth []Incident, st Stats) {
	t.Helper()
	pr, pw := io.Pipe()
	var tb bytes.Buffer
	var gerr error
	go func() {
		st, gerr = Generate(cfg, pw, &tb)
		pw.CloseWithError(gerr)
	}()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var e ev
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.EventID == nil || e.TS == nil || e.AgentID == nil ||
			e.TargetID == nil || e.Action == nil || e.Decision == nil || !tsRE.MatchString(*e.TS) {
			invalid = append(invalid, line)
			continue
		}
		ts, err := time.Parse(time.RFC3339, *e.TS)
		if err != nil {
			invalid = append(invalid, line)
			continue
		}
		e.t, e.line = ts, line
		valid = append(valid, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("Generate: %v", err)
	}
	dec := json.NewDecoder(&tb)
	for {
		var inc Incident
		if err := dec.Decode(&inc); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("truth: %v", err)
		}
		truth = append(truth, inc)
	}
	return valid, invalid, truth, st
}

// digest generates cfg and returns hashes of both outputs.
func digest(t testing.TB, cfg Config) (events, truth [32]byte, st Stats) {
	t.Helper()
	he, ht := sha256.New(), sha256.New()
	st, err := Generate(cfg, he, ht)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return [32]byte(he.Sum(nil)), [32]byte(ht.Sum(nil)), st
}

func TestGenerateDeterministic(t *testing.T) {
	cfg := smallConfig()
	e1, t1, s1 := digest(t, cfg)
	e2, t2, s2 := digest(t, cfg)
	if e1 != e2 || t1 != t2 || s1 != s2 {
		t.Fatal("same seed gave different output")
	}
	cfg.Seed = 2
	if e3, t3, _ := digest(t, cfg); e3 == e1 || t3 == t1 {
		t.Fatal("different seeds gave identical output")
	}
}

func TestEventContract(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 2 // more events, so the rare defects occur
	valid, invalid, _, st := run(t, cfg)
	if len(invalid) != st.Invalid || st.Invalid == 0 {
		t.Errorf("invalid lines: parsed %d, Stats %d (want > 0 and equal)", len(invalid), st.Invalid)
	}
	if len(valid) != st.Events+st.Duplicates {
		t.Errorf("valid lines %d, want Events+Duplicates = %d", len(valid), st.Events+st.Duplicates)
	}
	enum := map[string][]string{
		"decision":   {"allow", "deny"},
		"status":     {"ok", "error", "denied", "timeout"},
		"data_class": {"public", "internal", "confidential", "restricted"},
		"auth":       {"mtls", "jwt", "apikey", "none"},
	}
	seen := map[string]string{}
	dups, late, noClass := 0, 0, 0
	var maxTS time.Time
	for _, e := range valid {
		for f, v := range map[string]string{"decision": e.decision(), "status": e.Status, "data_class": e.DataClass, "auth": e.Auth} {
			if !slices.Contains(enum[f], v) {
				t.Fatalf("%s %q not allowed: %s", f, v, e.line)
			}
		}
		if e.id() == "" || e.target() == "" || e.action() == "" || e.Credential == "" || !strings.HasPrefix(e.SrcIP, "10.") ||
			!strings.HasPrefix(e.agent(), "spiffe://bank.example/agent/") || e.BytesIn < 0 || e.BytesOut < 0 || e.LatencyMS < 0 {
			t.Fatalf("bad field in %s", e.line)
		}
		if e.AgentClass == "" {
			noClass++
		} else if !strings.HasSuffix(strings.TrimRight(e.agent(), "0123456789"), "/"+e.AgentClass+"-") {
			t.Fatalf("agent_class %q does not match agent_id: %s", e.AgentClass, e.line)
		}
		if prev, ok := seen[e.id()]; ok {
			if prev != e.line {
				t.Fatalf("event_id %s reused by a different event", e.id())
			}
			dups++
		}
		seen[e.id()] = e.line
		if e.t.Before(maxTS) {
			late++
			if maxTS.Sub(e.t) > 20*time.Second {
				t.Fatalf("line %v behind the stream, want ≤ 20s: %s", maxTS.Sub(e.t), e.line)
			}
		} else {
			maxTS = e.t
		}
	}
	if dups != st.Duplicates || dups == 0 {
		t.Errorf("duplicates: found %d, Stats %d (want > 0 and equal)", dups, st.Duplicates)
	}
	if frac := float64(late) / float64(len(valid)); late == 0 || frac > 0.005 {
		t.Errorf("out-of-order fraction %.4f, want in (0, 0.005]", frac)
	}
	if frac := float64(noClass) / float64(len(valid)); frac < 0.03 || frac > 0.07 {
		t.Errorf("agent_class omitted on %.3f of events, want ≈ 0.05", frac)
	}
}

func TestTruth(t *testing.T) {
	cfg := smallConfig()
	valid, _, truth, st := run(t, cfg)
	warm := cfg.Start.Add(time.Duration(cfg.WarmupDays) * 24 * time.Hour)
	end := cfg.Start.Add(time.Duration(cfg.Days) * 24 * time.Hour)
	kinds := map[string]int{}
	ids := map[string]bool{}
	mal, ben := 0, 0
	for _, inc := range truth {
		kinds[inc.Kind]++
		if ids[inc.ID] {
			t.Errorf("duplicate incident id %s", inc.ID)
		}
		ids[inc.ID] = true
		if inc.Start.Before(warm) || !inc.End.After(inc.Start) || inc.End.After(end) {
			t.Errorf("%s: window [%s, %s) outside [warmup end, simulation end]", inc.ID, inc.Start, inc.End)
		}
		if inc.Benign {
			ben++
			if !inc.End.Equal(end) {
				t.Errorf("%s: benign change should last until the end", inc.ID)
			}
			if (inc.Kind == KindFleetDeployment) != (inc.AgentID == "*") {
				t.Errorf("%s: agent_id %q for kind %s", inc.ID, inc.AgentID, inc.Kind)
			}
		} else {
			mal++
			if d := inc.End.Sub(inc.Start); d < 20*time.Minute || d > 3*time.Hour {
				t.Errorf("%s: duration %v outside 20m–3h", inc.ID, d)
			}
		}
	}
	for _, k := range append(MaliciousKinds(), BenignKinds()...) {
		if kinds[k] == 0 {
			t.Errorf("no incident of kind %s", k)
		}
	}
	if mal != cfg.Incidents || mal != st.Incidents || ben != st.Benign {
		t.Errorf("truth has %d malicious / %d benign; config %d, stats %+v", mal, ben, cfg.Incidents, st)
	}

	// Each malicious incident leaves a trace in the events of its agent.
	byAgent := map[string][]ev{}
	for _, e := range valid {
		byAgent[e.agent()] = append(byAgent[e.agent()], e)
	}
	for _, inc := range truth {
		if inc.Benign {
			continue
		}
		var in, before []ev
		for _, e := range byAgent[inc.AgentID] {
			switch {
			case !e.t.Before(inc.Start) && e.t.Before(inc.End):
				in = append(in, e)
			case e.t.Before(inc.Start):
				before = append(before, e)
			}
		}
		if len(in) == 0 {
			t.Errorf("%s (%s): no events of %s in its window", inc.ID, inc.Kind, inc.AgentID)
			continue
		}
		targets := map[string]bool{}
		for _, e := range before {
			targets[e.target()] = true
		}
		count := func(f func(ev) bool) (n int) {
			for _, e := range in {
				if f(e) {
					n++
				}
			}
			return n
		}
		var trace int
		switch inc.Kind {
		case KindUnknownIdentity:
			if len(before) > 0 {
				t.Errorf("%s: unknown identity %s seen before its incident", inc.ID, inc.AgentID)
			}
			trace = count(func(e ev) bool { return !e.Attested || e.Auth == "apikey" || e.Auth == "none" })
		case KindCredentialMisuse:
			trace = count(func(e ev) bool { return e.Auth == "apikey" || e.Auth == "none" })
		case KindLateralMovement, KindPrivilegeProbing:
			trace = count(func(e ev) bool { return !targets[e.target()] || e.decision() == "deny" })
		default:
			trace = len(in) // rate and volume effects: checked by the detector benchmarks
		}
		if trace == 0 {
			t.Errorf("%s (%s): no trace among %d events in its window", inc.ID, inc.Kind, len(in))
		}
	}
}

// TestShape checks the statistical shape of the fleet without incidents.
func TestShape(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Rate = 20, 7, 7, 0, 0.5
	valid, _, truth, _ := run(t, cfg)
	if len(truth) != 0 {
		t.Fatalf("warmup covers everything, want empty truth, got %d lines", len(truth))
	}
	type key struct {
		class string
		hour  int
	}
	byHour := map[key]int{}
	weekend := map[string]int{}
	perClass := map[string]int{}
	for _, e := range valid {
		c := strings.TrimRight(e.agent()[strings.LastIndex(e.agent(), "/")+1:], "0123456789")
		c = strings.TrimSuffix(c, "-")
		perClass[c]++
		byHour[key{c, e.t.Hour()}]++
		if wd := e.t.Weekday(); wd == time.Saturday || wd == time.Sunday {
			weekend[c]++
		}
	}
	tests := []struct {
		name string
		ok   bool
	}{
		{"batch-reconciler ≥10× busier at 02:00 than 14:00", byHour[key{"batch-reconciler", 2}] >= 10*max(1, byHour[key{"batch-reconciler", 14}])},
		{"payments-bot silent at night", byHour[key{"payments-bot", 3}] == 0 && byHour[key{"payments-bot", 12}] > 0},
		{"payments-bot silent at weekends", weekend["payments-bot"] == 0},
		{"kyc-agent works some Saturdays", weekend["kyc-agent"] > 0 && weekend["kyc-agent"] < perClass["kyc-agent"]/10},
		{"support-assistant diurnal", byHour[key{"support-assistant", 14}] > 5*byHour[key{"support-assistant", 2}]},
		{"fraud-scorer flat", byHour[key{"fraud-scorer", 3}] > byHour[key{"fraud-scorer", 15}]*2/3},
		{"fraud-scorer busiest class", perClass["fraud-scorer"] > perClass["devops-bot"]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.ok {
				t.Errorf("failed; per class %v", perClass)
			}
		})
	}
	perAgentHour := float64(len(valid)) / float64(cfg.Agents) / float64(cfg.Days*24) / cfg.Rate
	if perAgentHour < 15 || perAgentHour > 150 {
		t.Errorf("average %.1f events per agent-hour, want a plausible 15–150", perAgentHour)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string // "" means valid
	}{
		{"default", func(*Config) {}, ""},
		{"zero values take defaults", func(c *Config) { *c = Config{Incidents: 3} }, ""},
		{"too few agents", func(c *Config) { c.Agents = 5 }, "agents"},
		{"negative days", func(c *Config) { c.Days = -1 }, "days"},
		{"negative warmup", func(c *Config) { c.WarmupDays = -1 }, "warmup_days"},
		{"warmup covers all", func(c *Config) { c.WarmupDays = c.Days }, "warmup_days"},
		{"warmup covers all, no incidents", func(c *Config) { c.WarmupDays, c.Incidents = c.Days, 0 }, ""},
		{"negative incidents", func(c *Config) { c.Incidents = -2 }, "incidents"},
		{"negative rate", func(c *Config) { c.Rate = -1 }, "rate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want ErrInvalidConfig naming %s", err, tc.field)
			}
			if _, gerr := Generate(c, io.Discard, io.Discard); !errors.Is(gerr, ErrInvalidConfig) {
				t.Fatalf("Generate error %v, want ErrInvalidConfig", gerr)
			}
		})
	}
}

func TestTooManyIncidents(t *testing.T) {
	c := DefaultConfig()
	c.Agents, c.Days, c.WarmupDays, c.Incidents = 6, 2, 1, 200
	if _, err := Generate(c, io.Discard, io.Discard); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("error %v, want ErrInvalidConfig", err)
	}
}

type failWriter struct{ n int }

var errDiskFull = errors.New("disk full")

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n -= len(p); w.n < 0 {
		return 0, errDiskFull
	}
	return len(p), nil
}

func TestWriteErrors(t *testing.T) {
	tests := []struct {
		name          string
		events, truth io.Writer
	}{
		{"events", &failWriter{n: 1 << 20}, io.Discard},
		{"truth", io.Discard, &failWriter{n: 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Generate(smallConfig(), tc.events, tc.truth); !errors.Is(err, errDiskFull) {
				t.Fatalf("error %v, want the writer's error", err)
			}
		})
	}
}

func TestTimestampFormat(t *testing.T) {
	tests := []struct {
		ms   int64
		want string
	}{
		{0, "1970-01-01T00:00:00.000Z"},
		{time.Date(2026, 3, 2, 9, 15, 3, 123e6, time.UTC).UnixMilli(), "2026-03-02T09:15:03.123Z"},
		{time.Date(2026, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli(), "2026-12-31T23:59:59.999Z"},
	}
	var f formatter
	for _, tc := range tests {
		if got := string(f.appendTS(nil, tc.ms)); got != tc.want {
			t.Errorf("appendTS(%d) = %s, want %s", tc.ms, got, tc.want)
		}
	}
}

func BenchmarkGenerate(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Days = 2
	cfg.WarmupDays = 1
	b.ReportAllocs()
	events := 0
	for b.Loop() {
		st, err := Generate(cfg, io.Discard, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		events += st.Events
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
}
