package detector

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/sim"
)

// etFleet is a simulated fleet's events, one per line, in stream order.
func etFleet(t *testing.T) [][]byte {
	t.Helper()
	var buf, truth bytes.Buffer
	if _, err := sim.Generate(sim.Config{Seed: 7, Agents: 30, Days: 3, WarmupDays: 2, Incidents: 4}, &buf, &truth); err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
}

var etTS = regexp.MustCompile(`"ts":"([^"]+)"`)
var etAgent = regexp.MustCompile(`"agent_id":"([^"]+)"`)

// etShift returns line with its timestamp moved by d (and its event_id
// changed, so that it is not a duplicate of the original).
func etShift(t *testing.T, line []byte, d time.Duration, tag string) []byte {
	t.Helper()
	m := etTS.FindSubmatch(line)
	if m == nil {
		return line
	}
	ts, err := time.Parse(time.RFC3339Nano, string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	out := bytes.Replace(line, m[0], []byte(`"ts":"`+ts.Add(d).UTC().Format(time.RFC3339Nano)+`"`), 1)
	return bytes.Replace(out, []byte(`"event_id":"`), []byte(`"event_id":"`+tag), 1)
}

// etRun replays lines and returns the alert ids and the pipeline's stats.
func etRun(t *testing.T, lines [][]byte) ([]string, Stats) {
	t.Helper()
	var ids []string
	p, err := NewPipeline(DefaultConfig(), func(a *Alert) { ids = append(ids, a.AgentID+" "+a.WindowStart.Format(time.RFC3339)+" "+a.Kind) })
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		_ = p.Process(l)
	}
	p.Flush()
	slices.Sort(ids)
	return ids, p.Stats()
}

// One source's clock must not close other agents' windows: a forged event
// far ahead (in a made-up agent's name, or a real agent's), one forged
// event a few minutes ahead in every window, and an honest producer whose
// clock runs five minutes fast lose none of the other agents' events and
// leave their alerts as they were.
func TestForgedEventTimeDoesNotBlindThePartition(t *testing.T) {
	lines := etFleet(t)
	wantIDs, want := etRun(t, lines)
	if want.Late != 0 {
		t.Fatalf("reference run has %d late events", want.Late)
	}
	victim := string(etAgent.FindSubmatch(lines[len(lines)/2])[1])
	at := len(lines) / 3
	forge := func(who string, d time.Duration, i int) []byte {
		l := etShift(t, lines[i], d, "forged-"+strconv.Itoa(i)+"-")
		if who != "" {
			l = etAgent.ReplaceAll(l, []byte(`"agent_id":"`+who+`"`))
		}
		return l
	}
	insert := func(extra map[int][]byte) [][]byte {
		var out [][]byte
		for i, l := range lines {
			out = append(out, l)
			if e, ok := extra[i]; ok {
				out = append(out, e)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		lines [][]byte
		// lost: events of other agents that may be late (those of the
		// agent whose name is forged, in the window the forgery closed).
		lost int64
	}{
		{"one event a day ahead, made-up agent", insert(map[int][]byte{at: forge("spiffe://bank.example/agent/ghost-1", 24*time.Hour, at)}), 0},
		{"one event a day ahead, real agent", insert(map[int][]byte{at: forge(victim, 24*time.Hour, at)}), 60},
		{"one event in year 2199", insert(map[int][]byte{at: forge("spiffe://bank.example/agent/ghost-2", 173*365*24*time.Hour, at)}), 0},
		{"one event per window, four minutes ahead", func() [][]byte {
			extra := map[int][]byte{}
			for i := 0; i < len(lines); i += 300 {
				extra[i] = forge(fmt.Sprintf("spiffe://bank.example/agent/ghost-%d", i%7), 4*time.Minute, i)
			}
			return insert(extra)
		}(), 0},
		{"honest producer five minutes fast", func() [][]byte {
			var out [][]byte
			for _, l := range lines {
				if m := etAgent.FindSubmatch(l); m != nil && string(m[1]) == victim {
					l = etShift(t, l, 5*time.Minute, "")
				}
				out = append(out, l)
			}
			return out
		}(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, got := etRun(t, tc.lines)
			if got.Late > tc.lost {
				t.Errorf("%d events late (at most %d allowed)", got.Late, tc.lost)
			}
			missing := 0
			for _, id := range wantIDs {
				if _, ok := slices.BinarySearch(ids, id); !ok {
					missing++
				}
			}
			// The victim's own windows may change (its clock was forged);
			// every other agent's alerts stay.
			if missing > 2 {
				t.Errorf("%d of %d reference alerts missing", missing, len(wantIDs))
			}
			t.Logf("late %d, alerts %d (reference %d), missing %d, windows far ahead dropped %d", got.Late, len(ids), len(wantIDs), missing, got.Ahead)
		})
	}
}

// With a trusted time (vigil run: the broker's timestamp bounded by the
// wall clock), an event stamped beyond the allowed skew is rejected as
// "future", and alert times never exceed the trusted time plus the skew.
func TestFutureEventsRejectedAgainstTrustedTime(t *testing.T) {
	lines := etFleet(t)
	var alerts []*Alert
	var cur int64 // the trusted time of the event being processed
	p, err := NewPipeline(DefaultConfig(), func(a *Alert) {
		alerts = append(alerts, a)
		if a.DetectedAt.UnixNano() > cur {
			t.Errorf("alert %s detected at %v, after the trusted time %v", a.AlertID, a.DetectedAt, time.Unix(0, cur).UTC())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	future := 0
	for i, l := range lines {
		m := etTS.FindSubmatch(l)
		if m == nil {
			continue
		}
		ts, _ := time.Parse(time.RFC3339Nano, string(m[1]))
		trusted := ts.Add(2 * time.Second).UnixNano() // the broker's clock, a little behind
		cur = trusted
		if i%1000 == 500 {
			l = etShift(t, l, 24*time.Hour, "f-")
			if err := p.ProcessAt(l, trusted); err == nil || rejectReason(err) != ReasonFuture {
				t.Fatalf("event a day ahead of the broker: %v", err)
			}
			future++
			continue
		}
		if i%1000 == 700 { // an honest clock five minutes fast
			l = etShift(t, l, 5*time.Minute, "s-")
		}
		if err := p.ProcessAt(l, trusted); err != nil && rejectReason(err) == ReasonFuture {
			t.Fatalf("event five minutes ahead rejected: %v", err)
		}
	}
	st := p.Stats()
	if st.Future != int64(future) || st.Late != 0 {
		t.Errorf("future %d (want %d), late %d (want 0)", st.Future, future, st.Late)
	}
	if len(alerts) == 0 {
		t.Fatal("no alerts: the test proves nothing")
	}
}
