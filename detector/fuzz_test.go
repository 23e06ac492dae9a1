package detector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
)

// Fuzz targets for what vigil reads back from the state topic: agent and
// peer-group snapshots, the partition's own state, the duplicate filter's
// pieces, checkpoint markers and the revocation policy's state. Anyone who
// can write to the state topic chooses these bytes. Each target checks that
// decoding never panics or allocates much more than its input, that what
// decodes re-encodes to bytes that decode to the same (encoding is
// idempotent after one round), and that errors wrap ErrState. The seeds are
// real encodings from a small pipeline (fuzzSeeds). `make fuzz` runs each
// for FUZZTIME; `go test` runs the seeds and testdata/fuzz.

// fuzzState holds real encodings of every kind of state record.
type fuzzState struct {
	agents, classes [][]byte
	partition       []byte
	dedupCur        []byte
	dedupPrev       []byte
	revoker         []byte
	marker          []byte // an envelope and marker payload
	records         [][2][]byte
}

var fuzzSeedsOnce = sync.OnceValue(func() *fuzzState {
	cfg := DefaultConfig()
	cfg.DedupHorizon = 20 * time.Minute // rotates: a previous generation too
	p, err := NewPipeline(cfg, nil)
	if err != nil {
		panic(err)
	}
	events := fleet(4, 60, t0, 2*time.Hour, 1)
	// A burst to a new target, so some snapshots hold new items and triggers.
	for i := range 30 {
		events = append(events, ev{id: fmt.Sprint("burst-", i), agent: "spiffe://bank.example/agent/worker-01",
			target: fmt.Sprint("new-", i), action: "op.9", decision: "deny", ts: t0.Add(2*time.Hour + time.Duration(i)*time.Second),
			cred: "cred-1", src: "10.0.0.1"})
	}
	for _, e := range events {
		_ = p.Process([]byte(e.json()))
	}
	s := &fuzzState{}
	for _, id := range p.AgentIDs(nil) {
		a, _ := p.AppendAgentState(nil, id)
		s.agents = append(s.agents, a)
	}
	for _, name := range p.ClassNames(nil) {
		c, _ := p.AppendClassState(nil, name)
		s.classes = append(s.classes, c)
	}
	s.partition = p.AppendPartitionState(nil)
	s.dedupCur = p.AppendDedupGeneration(nil, false)
	s.dedupPrev = p.AppendDedupGeneration(nil, true)
	rv := &Revoker{recent: map[string][]critical{"spiffe://bank.example/agent/worker-01": {{at: t0.UnixNano(), verified: true}, {at: t0.UnixNano() + 1}}},
		spent: []spent{{at: t0.UnixNano(), class: "worker"}}, done: map[string]held{"cred-1": {exp: t0.Add(time.Hour).UnixNano(), enforced: true}}}
	s.revoker = rv.AppendBinary(nil)
	gen, _ := p.dedup.Generation()
	m := checkpointMarker{Term: 3, Seq: 7, Topic: "agent-events", Partition: 1, Offset: int64(len(events)), Group: "vigil",
		State: s.partition, Agents: len(s.agents), Classes: len(s.classes), DedupGen: gen, DedupCur: 1, DedupPrev: 1, Policy: s.revoker}
	s.marker = m.appendPayload(appendEnvelope(nil, 3, 7))
	rec := func(k string, payload []byte) {
		s.records = append(s.records, [2][]byte{[]byte(k), append(appendEnvelope(nil, 3, 7), payload...)})
	}
	for i, a := range s.agents {
		rec(fmt.Sprint("agent-", i), a)
	}
	for i, c := range s.classes {
		rec(fmt.Sprint(classKeyPrefix, i), c)
	}
	rec(string(appendDedupKey(nil, gen, 0)), appendDedupPiece(nil, gen, 0, s.dedupCur))
	rec(string(appendDedupKey(nil, gen-1, 0)), appendDedupPiece(nil, gen-1, 0, s.dedupPrev))
	s.records = append(s.records, [2][]byte{[]byte(markerKey), s.marker})
	return s
})

// fuzzPipeline is a new pipeline with the defaults, collecting its alerts.
func fuzzPipeline(t *testing.T) (*Pipeline, *[]*Alert) {
	var alerts []*Alert
	p, err := NewPipeline(DefaultConfig(), func(a *Alert) { alerts = append(alerts, a) })
	if err != nil {
		t.Fatal(err)
	}
	return p, &alerts
}

func checkStateErr(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrState) {
		t.Fatalf("%s: error %v does not wrap ErrState", what, err)
	}
}

// checkAlerts: whatever state was restored, alerts are well formed.
func checkAlerts(t *testing.T, alerts []*Alert) {
	t.Helper()
	for _, a := range alerts {
		if math.IsNaN(a.Score) || a.Score < 0 || a.Score > 100 {
			t.Fatalf("alert %s for %q: score %v", a.Kind, a.AgentID, a.Score)
		}
		for _, r := range a.Reasons {
			if math.IsNaN(r.Value) || math.IsNaN(r.Z) || math.IsNaN(r.Contribution) {
				t.Fatalf("alert %s for %q: NaN in reason %+v", a.Kind, a.AgentID, r)
			}
		}
	}
}

// FuzzRestoreAgent: an agent snapshot from the state topic.
//
// Run: go test -run='^$' -fuzz=FuzzRestoreAgent ./detector
func FuzzRestoreAgent(f *testing.F) {
	for _, a := range fuzzSeedsOnce().agents {
		f.Add(a)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, alerts := fuzzPipeline(t)
		if err := p.RestoreAgent(data); err != nil {
			checkStateErr(t, "RestoreAgent", err)
			return
		}
		ids := p.AgentIDs(nil)
		if len(ids) != 1 {
			t.Fatalf("restored one snapshot, hold %d agents", len(ids))
		}
		once, _ := p.AppendAgentState(nil, ids[0])
		q, _ := fuzzPipeline(t)
		if err := q.RestoreAgent(once); err != nil {
			t.Fatalf("re-encoded snapshot does not restore: %v", err)
		}
		twice, _ := q.AppendAgentState(nil, ids[0])
		if !bytes.Equal(once, twice) {
			t.Fatalf("re-encoding is not stable:\n once %x\ntwice %x", once, twice)
		}
		// The restored agent goes on: its events are scored, its windows close.
		for i := range 3 {
			e := ev{id: fmt.Sprint("f", i), agent: ids[0], target: "t", action: "x", ts: t0.Add(time.Duration(i) * time.Minute)}
			_ = p.Process([]byte(e.json()))
		}
		p.Flush()
		checkAlerts(t, *alerts)
	})
}

// FuzzRestoreClass: a peer-group snapshot from the state topic.
//
// Run: go test -run='^$' -fuzz=FuzzRestoreClass ./detector
func FuzzRestoreClass(f *testing.F) {
	for _, c := range fuzzSeedsOnce().classes {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, alerts := fuzzPipeline(t)
		if err := p.RestoreClass(data); err != nil {
			checkStateErr(t, "RestoreClass", err)
			return
		}
		names := p.ClassNames(nil)
		if len(names) != 1 {
			t.Fatalf("restored one snapshot, hold %d peer groups", len(names))
		}
		once, _ := p.AppendClassState(nil, names[0])
		q, _ := fuzzPipeline(t)
		if err := q.RestoreClass(once); err != nil {
			t.Fatalf("re-encoded snapshot does not restore: %v", err)
		}
		if twice, _ := q.AppendClassState(nil, names[0]); !bytes.Equal(once, twice) {
			t.Fatalf("re-encoding is not stable:\n once %x\ntwice %x", once, twice)
		}
		// A new member of the group is judged against it.
		for i := range 3 {
			e := ev{id: fmt.Sprint("f", i), agent: "new-agent", class: names[0], target: "t", action: "x", ts: t0.Add(time.Duration(i) * time.Minute)}
			_ = p.Process([]byte(e.json()))
		}
		p.Flush()
		checkAlerts(t, *alerts)
	})
}

// FuzzRestorePartitionState: the partition's own state (watermark, closed
// windows, the quorum's clocks) from a checkpoint marker.
//
// Run: go test -run='^$' -fuzz=FuzzRestorePartitionState ./detector
func FuzzRestorePartitionState(f *testing.F) {
	f.Add(fuzzSeedsOnce().partition)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, alerts := fuzzPipeline(t)
		if err := p.RestorePartitionState(data); err != nil {
			checkStateErr(t, "RestorePartitionState", err)
			return
		}
		once := p.AppendPartitionState(nil)
		q, _ := fuzzPipeline(t)
		if err := q.RestorePartitionState(once); err != nil {
			t.Fatalf("re-encoded state does not restore: %v", err)
		}
		if twice := q.AppendPartitionState(nil); !bytes.Equal(once, twice) {
			t.Fatalf("re-encoding is not stable:\n once %x\ntwice %x", once, twice)
		}
		for i := range 3 {
			e := ev{id: fmt.Sprint("f", i), agent: fmt.Sprint("a", i), target: "t", action: "x", ts: t0.Add(time.Duration(i) * time.Hour)}
			_ = p.Process([]byte(e.json()))
		}
		p.Flush()
		checkAlerts(t, *alerts)
	})
}

// FuzzCheckpointRecords: the records of one state partition, as restore
// reads them — envelopes, markers, pieces of the duplicate filter, agents
// and peer groups — split from data at 0xff 0xfe. A marker that parses
// re-encodes to the same; whatever the records, selecting the state
// allocates in proportion to them, and restoring it never panics.
//
// Run: go test -run='^$' -fuzz=FuzzCheckpointRecords ./detector
func FuzzCheckpointRecords(f *testing.F) {
	s := fuzzSeedsOnce()
	var all []byte
	for _, r := range s.records {
		all = append(append(append(all, r[0]...), 0xff, 0xfd), r[1]...)
		all = append(all, 0xff, 0xfe)
	}
	f.Add(all)
	f.Add(append(append([]byte(markerKey), 0xff, 0xfd), s.marker...))
	f.Fuzz(func(t *testing.T, data []byte) {
		scan := newStateScan()
		for i, rec := range bytes.Split(data, []byte{0xff, 0xfe}) {
			k, v, ok := bytes.Cut(rec, []byte{0xff, 0xfd})
			if !ok {
				v = nil // a tombstone
			}
			scan.add(int64(i), k, v)
			if term, seq, payload, err := parseEnvelope(v); err != nil {
				checkStateErr(t, "parseEnvelope", err)
			} else if m, err := parseMarker(term, seq, payload); err != nil {
				checkStateErr(t, "parseMarker", err)
			} else if m.Group != "" { // markers before version 3 re-encode as version 3, which needs one
				again := m.appendPayload(appendEnvelope(nil, term, seq))
				term2, seq2, payload2, err := parseEnvelope(again)
				if err != nil {
					t.Fatalf("re-encoded marker: %v", err)
				}
				m2, err := parseMarker(term2, seq2, payload2)
				if err != nil || fmt.Sprint(m2) != fmt.Sprint(m) {
					t.Fatalf("marker does not round-trip: %+v, %v\nwant %+v", m2, err, m)
				}
			}
			if len(v) > 11 && v[11] == dedupMagic {
				_, n, _, ok := parseDedupPiece(v[11:])
				if ok && n < 0 {
					t.Fatalf("dedup piece number %d", n)
				}
			}
		}
		rs := scan.result()
		if rs == nil {
			return
		}
		if n := len(rs.dedupCur) + len(rs.dedupPrev); n > maxDedupPieces*2 {
			t.Fatalf("%d dedup pieces", n)
		}
		p, alerts := fuzzPipeline(t)
		var rv Revoker
		if err := rv.DecodeFrom(rs.marker.Policy); err != nil {
			checkStateErr(t, "Revoker.DecodeFrom", err)
		}
		if err := p.RestorePartitionState(rs.marker.State); err != nil {
			return
		}
		_ = p.RestoreDedup(slices.DeleteFunc(rs.dedupCur, isNil), slices.DeleteFunc(rs.dedupPrev, isNil))
		for _, c := range rs.classes {
			_ = p.RestoreClass(c)
		}
		for _, a := range rs.agents {
			_ = p.RestoreAgent(a)
		}
		e := ev{id: "f", agent: "a", target: "t", action: "x", ts: t0}
		_ = p.Process([]byte(e.json()))
		p.Flush()
		checkAlerts(t, *alerts)
	})
}

// FuzzRevokerState: the revocation policy's state in a checkpoint marker.
//
// Run: go test -run='^$' -fuzz=FuzzRevokerState ./detector
func FuzzRevokerState(f *testing.F) {
	s := fuzzSeedsOnce()
	f.Add(s.revoker)
	f.Add([]byte{1, 1, 1, 'a', 1, 2, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Revoker
		if err := r.DecodeFrom(data); err != nil {
			checkStateErr(t, "DecodeFrom", err)
			return
		}
		once := r.AppendBinary(nil)
		var q Revoker
		if err := q.DecodeFrom(once); err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
		if twice := q.AppendBinary(nil); !bytes.Equal(once, twice) {
			t.Fatalf("re-encoding is not stable:\n once %x\ntwice %x", once, twice)
		}
	})
}

// FuzzParseInventory: the agent inventory file. What parses holds only
// valid ids and classes and a known mode, and re-encodes to JSON that
// parses to the same; an unlisted id's lookalike is a listed id.
//
// Run: go test -run='^$' -fuzz=FuzzParseInventory ./detector
func FuzzParseInventory(f *testing.F) {
	f.Add([]byte(`{"agents":[
		{"id":"spiffe://bank.example/agent/payments-bot-07","class":"payments-bot","owner":"payments","criticality":"high"},
		{"id":"spiffe://bank.example/agent/kyc-agent-01","class":"kyc-agent","mode":"observe"}]}`))
	f.Add([]byte(`{"agents":[{"id":"a","class":"c","mode":"enforce"},{"id":"A","class":"c"}]}`))
	f.Add([]byte(`{"agents":[{"id":"a\u202e","class":"c"}]} {"agents":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		inv, err := ParseInventory(data)
		if err != nil {
			return
		}
		var entries []*InventoryEntry
		for id, e := range inv.agents {
			if id != e.ID || features.CheckID(e.ID) != nil || features.CheckID(e.Class) != nil ||
				(e.Mode != InventoryObserve && e.Mode != InventoryEnforce) {
				t.Fatalf("accepted %+v", e)
			}
			if known := inv.lookalike(e.ID + "-x"); known == "" || inv.agents[known] == nil {
				t.Fatalf("%q-x: lookalike %q", e.ID, known)
			}
			entries = append(entries, e)
		}
		slices.SortFunc(entries, func(a, b *InventoryEntry) int { return strings.Compare(a.ID, b.ID) })
		again, err := json.Marshal(map[string]any{"agents": entries})
		if err != nil {
			t.Fatal(err)
		}
		inv2, err := ParseInventory(again)
		if err != nil {
			t.Fatalf("re-encoded inventory: %v\n%s", err, again)
		}
		if len(inv2.agents) != len(inv.agents) {
			t.Fatalf("re-encoded inventory: %d agents, want %d", len(inv2.agents), len(inv.agents))
		}
		for id, e := range inv.agents {
			if e2 := inv2.agents[id]; e2 == nil || *e2 != *e {
				t.Fatalf("re-encoded %+v as %+v", e, e2)
			}
		}
	})
}
