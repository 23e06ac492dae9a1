package detector

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
)

// A pipeline restored from snapshots taken mid-stream (open windows
// included) produces exactly the alerts an uninterrupted pipeline produces.
func TestSnapshotRestoreSameAlerts(t *testing.T) {
	events := fleet(6, 60, t0, 3*24*time.Hour, 7)
	// An attack after the cut, on one agent.
	cut := len(events) * 2 / 3
	atk := events[cut+100].ts
	victim := "spiffe://bank.example/agent/worker-02"
	var burst []ev
	for i := range 60 {
		burst = append(burst, ev{id: fmt.Sprintf("x%d", i), agent: victim, target: fmt.Sprintf("db-%d", i%15),
			action: "dump", ts: atk.Add(time.Duration(i) * 2 * time.Second), bytesOut: 50000})
	}
	all := merge(events, burst)
	cut = slices.IndexFunc(all, func(e ev) bool { return !e.ts.Before(atk.Add(-90 * time.Second)) })

	ids := func(as []*Alert) []string {
		var out []string
		for _, a := range as {
			out = append(out, a.AlertID)
		}
		slices.Sort(out)
		return out
	}
	whole, _ := run(t, DefaultConfig(), all)
	if len(whole) == 0 {
		t.Fatal("the attack raised no alert: the test would prove nothing")
	}

	var got []*Alert
	collect := func(a *Alert) { got = append(got, a) }
	first, err := NewPipeline(DefaultConfig(), collect)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range all[:cut] {
		if err := first.Process([]byte(e.json())); err != nil {
			t.Fatal(err)
		}
	}
	var snaps [][]byte
	for _, name := range first.ClassNames(nil) {
		b, _ := first.AppendClassState(nil, name)
		snaps = append(snaps, b)
	}
	open := 0
	for _, id := range first.AgentIDs(nil) {
		b, _ := first.AppendAgentState(nil, id)
		snaps = append(snaps, b)
		if a := first.agents[id]; a.open[0] || a.open[1] {
			open++
		}
	}
	if open == 0 {
		t.Fatal("no window open at the cut: the test would not exercise window restore")
	}

	second, err := NewPipeline(DefaultConfig(), collect)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		var err error
		if s[0] == classMagic {
			err = second.RestoreClass(s)
		} else {
			err = second.RestoreAgent(s)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range all[cut:] {
		if err := second.Process([]byte(e.json())); err != nil {
			t.Fatalf("after restore: %v", err)
		}
	}
	second.Flush()
	if w, g := ids(whole), ids(got); !slices.Equal(w, g) {
		t.Errorf("alerts differ after restore:\n whole %v\n  got  %v", w, g)
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	p, _ := NewPipeline(DefaultConfig(), nil)
	for _, b := range [][]byte{nil, {'A'}, {'A', 1, 200}, {'A', 1, 1, 'x', 1, 'y', 0}, {'C', 1, 0, 5}} {
		if err := p.RestoreAgent(b); err == nil || !errors.Is(err, ErrState) {
			if err2 := p.RestoreClass(b); err2 == nil || !errors.Is(err2, ErrState) {
				t.Errorf("% x: agent %v, class %v: want ErrState", b, err, err2)
			}
		}
	}
}

// An agent snapshot keeps the probed items and the open window's count of
// denied calls to unfamiliar items (version 3), and the new credential and
// address pairs with the open window's calls from them (version 4); older
// snapshots, which lack them, still restore, with them empty.
func TestAgentSnapshotVersions(t *testing.T) {
	const id = "spiffe://bank.example/agent/worker-01"
	events := []ev{
		{id: "a", agent: id, target: "ledger", action: "read", ts: t0},
		{id: "b", agent: id, target: "iam", action: "policy.attach", decision: "deny", ts: t0.Add(time.Second)},
		{id: "c", agent: id, target: "iam", action: "policy.attach", decision: "deny", ts: t0.Add(2 * time.Second)},
	}
	_, p := run(t, DefaultConfig(), nil)
	for _, e := range events {
		if err := p.Process([]byte(e.json())); err != nil {
			t.Fatal(err)
		}
	}
	a := p.agents[id]
	var unfam uint16
	for s := range 2 {
		if a.open[s] {
			unfam += a.win[s].Unfamiliar
		}
	}
	if unfam != 2 || a.probes == (features.Probes{}) {
		t.Fatalf("before the snapshot: %d unfamiliar denials, probes %v", unfam, a.probes)
	}
	a.origins[1] = 0xfeedbeef<<32 | 1_750_000_000
	for s := range 2 {
		if a.open[s] {
			a.win[s].OriginN, a.win[s].Origin, a.win[s].Known = 3, 1, 2
		}
	}
	snap, _ := p.AppendAgentState(nil, id)

	q, _ := NewPipeline(DefaultConfig(), nil)
	if err := q.RestoreAgent(snap); err != nil {
		t.Fatal(err)
	}
	if again, _ := q.AppendAgentState(nil, id); !bytes.Equal(again, snap) {
		t.Errorf("version 4 does not round-trip")
	}
	qa := q.agents[id]
	if qa.origins != a.origins {
		t.Errorf("pairs %v, want %v", qa.origins, a.origins)
	}

	// Version 3: without the version-4 tail (three uvarints per open
	// window, four uint64).
	v3 := append([]byte(nil), snap[:len(snap)-3-32]...)
	v3[1] = 3
	r3, _ := NewPipeline(DefaultConfig(), nil)
	if err := r3.RestoreAgent(v3); err != nil {
		t.Fatalf("version 3: %v", err)
	}
	if ra := r3.agents[id]; ra.origins != (features.Origins{}) || ra.probes != a.probes {
		t.Errorf("version 3: pairs %v, probes %v", ra.origins, ra.probes)
	}

	// Version 2: the same bytes without the version-3 tail either (one
	// uvarint per open window, four uint32).
	v2 := append([]byte(nil), v3[:len(v3)-1-16]...)
	v2[1] = 2
	r, _ := NewPipeline(DefaultConfig(), nil)
	if err := r.RestoreAgent(v2); err != nil {
		t.Fatalf("version 2: %v", err)
	}
	ra := r.agents[id]
	for s := range 2 {
		if ra.open[s] && ra.win[s].Unfamiliar != 0 {
			t.Errorf("version 2: window %d has %d unfamiliar denials", s, ra.win[s].Unfamiliar)
		}
	}
	if ra.probes != (features.Probes{}) {
		t.Errorf("version 2: probes %v", ra.probes)
	}
}
