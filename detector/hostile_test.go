package detector

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
)

// TestHostileEventsAreRejectedWithReason (issue 12 item 5): hostile events
// through the pipeline as vigil run feeds it (ProcessMessage: Kafka key,
// trusted time). Each is rejected with the reason its dead letter and the
// counter vigil_consumer_dead_letters_total{reason} carry (the worker
// dead-letters every error ProcessMessage returns, by rejectReason), none
// creates an agent, and the partition goes on scoring the events behind
// them.
func TestHostileEventsAreRejectedWithReason(t *testing.T) {
	const agent = "spiffe://bank.example/agent/worker-01"
	good := func(i int) string {
		return ev{id: fmt.Sprint("g", i), agent: agent, target: "svc-1", action: "op.1", ts: t0.Add(time.Duration(i) * time.Second)}.json()
	}
	base := good(0)
	// set replaces (or adds) a member of the good event.
	set := func(k, v string) string {
		s := base
		if i := strings.Index(s, `"`+k+`":`); i >= 0 {
			end := i + len(k) + 3
			depth, inStr := 0, false
			for ; end < len(s); end++ {
				c := s[end]
				switch {
				case inStr && c == '\\':
					end++
				case c == '"':
					inStr = !inStr
				case !inStr && (c == '{' || c == '['):
					depth++
				case !inStr && (c == '}' || c == ']') && depth > 0:
					depth--
				case !inStr && depth == 0 && (c == ',' || c == '}'):
					return s[:i] + `"` + k + `":` + v + s[end:]
				}
			}
		}
		return s[:len(s)-1] + `,"` + k + `":` + v + `}`
	}
	deep := strings.Repeat("[", features.MaxEventSize-len(base)-16) // nesting as deep as the size limit allows
	for _, tc := range []struct {
		name, in string
		key      string // "" means the agent's id
		want     features.Reason
	}{
		{"invalid UTF-8 in agent_id", set("agent_id", "\"worker-\xff\xfe\""), "", features.ReasonBadJSON},
		{"NUL in agent_id", set("agent_id", `"worker\u0000-01"`), "", features.ReasonBadID},
		{"control character in target_id", set("target_id", `"svc\u001b[2J"`), "", features.ReasonBadID},
		{"bidi override in agent_id", set("agent_id", `"spiffe://bank.example/agent/\u202eworker-01"`), "", features.ReasonBadID},
		{"zero-width space in event_id", set("event_id", `"g\u200b0"`), "", features.ReasonBadID},
		{"agent_id twice", set("x", `0,"agent_id":"spiffe://bank.example/agent/worker-02"`), "", features.ReasonDuplicateKey},
		{"agent_id and AGENT_ID", set("AGENT_ID", `"spiffe://bank.example/agent/worker-02"`), "", features.ReasonDuplicateKey},
		{"unknown field nested to the size limit", set("ext", deep), "", features.ReasonBadJSON},
		{"unknown field nested 33 deep", set("ext", strings.Repeat(`{"a":`, 33)+"1"+strings.Repeat("}", 33)), "", features.ReasonBadJSON},
		{"oversized", set("pad", `"`+strings.Repeat("x", features.MaxEventSize)+`"`), "", features.ReasonTooLarge},
		{"NaN", set("latency_ms", "NaN"), "", features.ReasonBadJSON},
		{"Infinity", set("amount", "Infinity"), "", features.ReasonBadJSON},
		{"1e400", set("latency_ms", "1e400"), "", features.ReasonBadJSON},
		{"negative bytes_in", set("bytes_in", "-1"), "", features.ReasonBadValue},
		{"negative amount", set("amount", "-0.01"), "", features.ReasonBadValue},
		{"bytes_out beyond int64", set("bytes_out", "99999999999999999999"), "", features.ReasonBadValue},
		{"bytes_out 1e30", set("bytes_out", "1e30"), "", features.ReasonBadType},
		{"bytes_in fractional", set("bytes_in", "1.5"), "", features.ReasonBadType},
		{"ts in 1970", set("ts", `"1970-01-01T00:00:00Z"`), "", features.ReasonBadTimestamp},
		{"ts in 9999", set("ts", `"9999-12-31T23:59:59Z"`), "", features.ReasonBadTimestamp},
		{"ts a day ahead of the broker", set("ts", `"`+t0.Add(24*time.Hour).Format(time.RFC3339)+`"`), "", ReasonFuture},
		{"ts a century ahead", set("ts", `"2126-03-02T00:00:00Z"`), "", ReasonFuture},
		{"key is another agent", base, "spiffe://bank.example/agent/worker-02", ReasonKeyMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := fuzzPipeline(t)
			if err := p.ProcessMessage([]byte(good(1)), []byte(agent), t0.Add(time.Minute).UnixNano()); err != nil {
				t.Fatalf("good event: %v", err)
			}
			key := tc.key
			if key == "" {
				key = agent
			}
			start := time.Now()
			err := p.ProcessMessage([]byte(tc.in), []byte(key), t0.Add(time.Minute).UnixNano())
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %v", d)
			}
			if err == nil {
				t.Fatalf("accepted %.200q", tc.in)
			}
			if got := rejectReason(err); got != tc.want {
				t.Fatalf("reason %q (%v), want %q", got, err, tc.want)
			}
			if n := len(p.AgentIDs(nil)); n != 1 {
				t.Errorf("%d agents after a rejected event, want 1", n)
			}
			if err := p.ProcessMessage([]byte(good(2)), []byte(agent), t0.Add(time.Minute).UnixNano()); err != nil {
				t.Fatalf("good event after it: %v", err)
			}
			d := NewDeadLetter("agent-events", 0, 7, []byte(key), []byte(tc.in), t0, rejectReason(err), err.Error())
			if d.Reason != tc.want || len(d.Value) > MaxDeadLetterValue || len(d.Detail) > MaxDeadLetterDetail {
				t.Errorf("dead letter: reason %q, %d-byte value, %d-byte detail", d.Reason, len(d.Value), len(d.Detail))
			}
		})
	}
}

// A warm agent that floods targets — 5,000 never-seen ones in a window —
// holds no more memory for it (its window's and first-seen set's sizes are
// fixed) and is alerted on.
func TestTargetFloodIsBoundedAndAlerted(t *testing.T) {
	events := fleet(6, 60, t0, 26*time.Hour, 1)
	victim := "spiffe://bank.example/agent/worker-02"
	at := t0.Add(26*time.Hour + 30*time.Second)
	var flood []ev
	for i := range 5000 {
		flood = append(flood, ev{id: fmt.Sprint("flood-", i), agent: victim, target: fmt.Sprintf("scan-%05d", i),
			action: "op.1", ts: at.Add(time.Duration(i) * 20 * time.Millisecond), bytesOut: 900})
	}
	var alerts []*Alert
	p, err := NewPipeline(DefaultConfig(), func(a *Alert) { alerts = append(alerts, a) })
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if err := p.Process([]byte(e.json())); err != nil {
			t.Fatal(err)
		}
	}
	a := p.agents[victim]
	slots := a.seen.Slots()
	for _, e := range flood {
		if err := p.Process([]byte(e.json())); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.seen.Slots(); got != slots {
		t.Errorf("first-seen set grew from %d to %d slots", slots, got)
	}
	if n := len(p.AgentIDs(nil)); n != 6 {
		t.Errorf("%d agents, want 6", n)
	}
	p.Flush()
	for _, al := range alerts {
		if al.AgentID == victim && al.Severity == SeverityCritical {
			t.Logf("alert: %s %s score %.0f, reasons %v", al.Severity, al.Kind, al.Score, al.Reasons[0].Feature)
			return
		}
	}
	t.Fatalf("no critical alert on the flooding agent; %d alerts", len(alerts))
}
