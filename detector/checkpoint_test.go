package detector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/sim"
)

// simLines returns a simulated fleet's lines (with the simulator's
// out-of-order, duplicate and invalid lines), cached per configuration.
func simLines(t testing.TB, cfg sim.Config) [][]byte {
	t.Helper()
	key := fmt.Sprint(cfg)
	simCache.Lock()
	defer simCache.Unlock()
	if l, ok := simCache.m[key]; ok {
		return l
	}
	var buf, truth bytes.Buffer
	if _, err := sim.Generate(cfg, &buf, &truth); err != nil {
		t.Fatal(err)
	}
	l := bytes.Split(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), []byte("\n"))
	if simCache.m == nil {
		simCache.m = make(map[string][][]byte)
	}
	simCache.m[key] = l
	return l
}

var simCache struct {
	sync.Mutex
	m map[string][][]byte
}

// A pipeline checkpointed incrementally — at each cut only the agents and
// peer groups TakeChanges names, and the pipeline-level state when it
// changed — and replaced by one restored from the accumulated snapshots,
// again and again, mid-window, produces exactly the alerts (every field, in
// order) of the uninterrupted pipeline, and ends in exactly its state. This
// is what the runtime relies on: a change that TakeChanges missed, or state
// a snapshot left out (duplicate filter, watermark, early-decision triggers,
// the order windows close in), shows up here.
func TestIncrementalCheckpointsRestoreExactly(t *testing.T) {
	lines := simLines(t, sim.Config{Seed: 3, Agents: 12, Days: 3, WarmupDays: 1, Incidents: 5})
	cfg := DefaultConfig()
	var want []*Alert
	whole, err := NewPipeline(cfg, func(a *Alert) { want = append(want, a) })
	if err != nil {
		t.Fatal(err)
	}
	every := 53 // lines between cuts: a few minutes of the fleet's time
	// At every 7th cut the partition is idle for a while (the runtime then
	// advances the watermark by the wall clock), in both runs.
	idle := func(p *Pipeline, cut int) {
		if cut%7 == 0 {
			p.AdvanceTo(p.stats.MaxTS + int64(3*time.Minute))
		}
	}
	for i, l := range lines {
		_ = whole.Process(l)
		if (i+1)%every == 0 {
			idle(whole, (i+1)/every)
		}
	}

	var got []*Alert
	tracked := func() *Pipeline {
		p, err := NewPipeline(cfg, func(a *Alert) { got = append(got, a) })
		if err != nil {
			t.Fatal(err)
		}
		p.TrackChanges()
		return p
	}
	p := tracked()
	store := map[string][]byte{} // as the compacted topic holds it: key → latest snapshot
	var part []byte
	dedup := map[uint64][][]byte{} // the duplicate filter's pieces, by generation
	cuts, written := 0, 0
	cut := func() {
		cuts++
		agents, classes, changed := p.TakeChanges(nil, nil)
		for _, name := range classes {
			store[classKeyPrefix+name], _ = p.AppendClassState(nil, name)
		}
		for _, id := range agents {
			store[id], _ = p.AppendAgentState(nil, id)
		}
		written += len(agents) + len(classes)
		if changed {
			part = p.AppendPartitionState(nil)
		}
		gen, cur, prev := p.TakeDedupChanges()
		if len(prev) > 0 {
			dedup[gen-1] = append(dedup[gen-1], features.AppendHashes(nil, prev))
		}
		if len(cur) > 0 {
			dedup[gen] = append(dedup[gen], features.AppendHashes(nil, cur))
		}
		q := tracked()
		if err := q.RestorePartitionState(part); err != nil {
			t.Fatal(err)
		}
		if err := q.RestoreDedup(dedup[gen], dedup[gen-1]); err != nil {
			t.Fatal(err)
		}
		for k, v := range store { // map order: restore must not depend on it
			if strings.HasPrefix(k, classKeyPrefix) {
				err = q.RestoreClass(v)
			} else {
				err = q.RestoreAgent(v)
			}
			if err != nil {
				t.Fatalf("cut %d: %v", cuts, err)
			}
		}
		if a, c, _ := q.TakeChanges(nil, nil); len(a)+len(c) > 0 {
			t.Fatalf("cut %d: restoring changed %d agents and %d peer groups", cuts, len(a), len(c))
		}
		p = q
	}
	for i, l := range lines {
		_ = p.Process(l)
		if n := (i + 1) / every; (i+1)%every == 0 {
			cut()
			if n%7 == 0 { // idle: a checkpoint with no event since the last one
				idle(p, n)
				cut()
			}
		}
	}
	if len(want) < 3 {
		t.Fatalf("the stream raised %d alerts: the test would prove little", len(want))
	}
	t.Logf("%d lines, %d cuts, %d alerts; %d snapshots written incrementally (%d if every agent and peer group were written at every cut)",
		len(lines), cuts, len(want), written, cuts*(len(p.agents)+len(p.classes)))
	if len(got) != len(want) {
		t.Fatalf("%d alerts after restores, want %d", len(got), len(want))
	}
	for i := range want {
		w, _ := json.Marshal(want[i])
		g, _ := json.Marshal(got[i])
		if !bytes.Equal(w, g) {
			t.Fatalf("alert %d differs:\n got %s\nwant %s", i, g, w)
		}
	}
	// The end state is the same, byte for byte.
	for _, id := range whole.AgentIDs(nil) {
		w, _ := whole.AppendAgentState(nil, id)
		g, ok := p.AppendAgentState(nil, id)
		if !ok || !bytes.Equal(w, g) {
			wa, ga := whole.agents[id], p.agents[id]
			t.Errorf("agent %s: state differs after restores: persist %d/%d last %d/%d open %v/%v trig %v %v %v / %v %v %v order %v/%v base %v seen %v",
				id, wa.persist, ga.persist, wa.lastIdx, ga.lastIdx, wa.open, ga.open, wa.nextN, wa.nextNew, wa.nextBad, ga.nextN, ga.nextNew, ga.nextBad, wa.order, ga.order,
				func() bool {
					x, _ := wa.base.AppendBinary(nil)
					y, _ := ga.base.AppendBinary(nil)
					return bytes.Equal(x, y)
				}(),
				bytes.Equal(wa.seen.AppendBinary(nil), ga.seen.AppendBinary(nil)))
		}
	}
	for _, name := range whole.ClassNames(nil) {
		w, _ := whole.AppendClassState(nil, name)
		if g, ok := p.AppendClassState(nil, name); !ok || !bytes.Equal(w, g) {
			t.Errorf("peer group %s: state differs after restores", name)
		}
	}
	if len(p.agents) != len(whole.agents) || p.closed != whole.closed || p.stats.MaxTS != whole.stats.MaxTS || p.dedup.Len() != whole.dedup.Len() {
		t.Errorf("pipeline state differs: agents %d/%d closed %d/%d max_ts %d/%d dedup %d/%d",
			len(p.agents), len(whole.agents), p.closed, whole.closed, p.stats.MaxTS, whole.stats.MaxTS, p.dedup.Len(), whole.dedup.Len())
	}
}

func TestRestorePartitionStateRefusesOtherWindows(t *testing.T) {
	p, _ := NewPipeline(DefaultConfig(), nil)
	snap := p.AppendPartitionState(nil)
	cfg := DefaultConfig()
	cfg.Model.WindowSize *= 2
	q, err := NewPipeline(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.RestorePartitionState(snap); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "window_size") {
		t.Errorf("restore with another window size: %v, want ErrState naming window_size", err)
	}
	for n := range len(snap) - 1 {
		if err := p.RestorePartitionState(snap[:n]); !errors.Is(err, ErrState) {
			t.Errorf("truncated to %d bytes: %v, want ErrState", n, err)
		}
	}
}

// scanRec is one record of a scripted state partition.
type scanRec struct {
	key   string
	value []byte
}

func agentRec(term, seq uint64, p *Pipeline, id string) scanRec {
	v, ok := p.AppendAgentState(appendEnvelope(nil, term, seq), id)
	if !ok {
		panic("no agent " + id)
	}
	return scanRec{id, v}
}

func markerRec(term, seq uint64, offset int64, agents int) scanRec {
	m := checkpointMarker{Term: term, Seq: seq, Topic: "agent-events", Group: "vigil", Offset: offset, Agents: agents}
	return scanRec{markerKey, m.appendPayload(appendEnvelope(nil, term, seq))}
}

// The state restored is that of the last marker, as of that marker: later
// records (a checkpoint that never completed) and records of other terms (a
// new owner's unfinished first checkpoint, an evicted owner that has not
// noticed) are ignored, whatever compaction left of them; what compaction
// took from the marker's state is reported.
func TestStateScanSelectsLastMarker(t *testing.T) {
	// Agents a, b, c in three versions each (the same agent after 1, 2, 3
	// events): version v of x is snap[x][v].
	snap := map[string][][]byte{}
	p, _ := NewPipeline(DefaultConfig(), nil)
	for v := range 3 {
		for _, id := range []string{"a", "b", "c"} {
			e := ev{id: fmt.Sprintf("%s%d", id, v), agent: id, target: "t", action: "x", ts: t0}
			if err := p.Process([]byte(e.json())); err != nil {
				t.Fatal(err)
			}
			s, _ := p.AppendAgentState(nil, id)
			snap[id] = append(snap[id], s)
		}
	}
	rec := func(term, seq uint64, id string, v int) scanRec {
		return scanRec{id, append(appendEnvelope(nil, term, seq), snap[id][v]...)}
	}
	const t1, t2 = 0x1111, 0x2222
	for _, tc := range []struct {
		name     string
		recs     []scanRec
		offset   int64          // of the marker chosen; -1: none
		want     map[string]int // agent → version restored
		problems string         // substring of the problems; "" none
		compact  bool           // compact the log first (keep each key's last record)
		stale    []string       // keys to delete, when given
	}{
		{name: "empty", offset: -1},
		{name: "records without a marker", recs: []scanRec{rec(t1, 1, "a", 0)}, offset: -1},
		{name: "one checkpoint", offset: 10,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2)},
			want: map[string]int{"a": 0, "b": 0}},
		{name: "incremental checkpoints", offset: 30,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				rec(t1, 2, "a", 1), markerRec(t1, 2, 20, 2),
				rec(t1, 3, "c", 0), rec(t1, 3, "b", 2), markerRec(t1, 3, 30, 3)},
			want: map[string]int{"a": 1, "b": 2, "c": 0}},
		{name: "unfinished checkpoint after the marker", offset: 20,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				rec(t1, 2, "a", 1), markerRec(t1, 2, 20, 2),
				rec(t1, 3, "b", 2), rec(t1, 3, "c", 0)},
			want: map[string]int{"a": 1, "b": 0}, stale: []string{"c"}},
		{name: "a retried checkpoint rewrites what its failed attempt wrote", offset: 20,
			recs: []scanRec{rec(t1, 1, "a", 0), markerRec(t1, 1, 10, 1),
				rec(t1, 2, "a", 1), // attempt 1 of seq 2 failed here
				rec(t1, 2, "b", 0), rec(t1, 2, "a", 2), markerRec(t1, 2, 20, 2)},
			want: map[string]int{"a": 2, "b": 0}},
		{name: "a marker that arrives again late is ignored", offset: 20,
			recs: []scanRec{rec(t1, 1, "a", 0), markerRec(t1, 1, 10, 1),
				rec(t1, 2, "a", 1), markerRec(t1, 2, 20, 1), markerRec(t1, 1, 10, 1)},
			want: map[string]int{"a": 1}},
		{name: "new owner's first checkpoint unfinished", offset: 10,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				rec(t2, 1, "a", 1), rec(t2, 1, "b", 1)},
			want: map[string]int{"a": 0, "b": 0}},
		{name: "new owner's first checkpoint complete", offset: 15,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				rec(t2, 1, "a", 1), rec(t2, 1, "b", 0), markerRec(t2, 1, 15, 2)},
			want: map[string]int{"a": 1, "b": 0}},
		{name: "evicted owner writes after its successor", offset: 25,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				rec(t2, 1, "a", 1), rec(t2, 1, "b", 1), markerRec(t2, 1, 15, 2),
				rec(t1, 2, "a", 2), // the former owner, late
				rec(t2, 2, "c", 0), markerRec(t2, 2, 25, 3)},
			want: map[string]int{"a": 1, "b": 1, "c": 0}},
		{name: "compaction took a record of the marker's state", offset: 20, compact: true, problems: "1 of 2 agents",
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				rec(t1, 2, "a", 1), markerRec(t1, 2, 20, 2),
				rec(t1, 3, "b", 2)}, // unfinished: compaction keeps it, not b's version 0
			want: map[string]int{"a": 1}},
		{name: "compaction of a sound log loses nothing", offset: 30, compact: true,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				rec(t2, 1, "a", 1), rec(t2, 1, "b", 0), markerRec(t2, 1, 20, 2),
				rec(t2, 2, "b", 1), markerRec(t2, 2, 30, 2)},
			want: map[string]int{"a": 1, "b": 1}},
		{name: "tombstone", offset: 20,
			recs: []scanRec{rec(t1, 1, "a", 0), rec(t1, 1, "b", 0), markerRec(t1, 1, 10, 2),
				{"b", nil}, markerRec(t1, 2, 20, 1)},
			want: map[string]int{"a": 0}, stale: []string{}},
		{name: "garbage is skipped", offset: 10,
			recs: []scanRec{{"x", []byte("not state")}, rec(t1, 1, "a", 0), {markerKey, []byte{'v', 1}}, markerRec(t1, 1, 10, 1),
				{"y", append(appendEnvelope(nil, t1, 1), 'M', 1)}},
			want: map[string]int{"a": 0}, stale: []string{"x", "y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := tc.recs
			if tc.compact {
				last := map[string]int{}
				for i, r := range recs {
					last[r.key] = i
				}
				var kept []scanRec
				for i, r := range recs {
					if last[r.key] == i {
						kept = append(kept, r)
					}
				}
				recs = kept
			}
			s := newStateScan()
			for i, r := range recs {
				s.add(int64(i), []byte(r.key), r.value)
			}
			rs := s.result()
			if tc.offset < 0 {
				if rs != nil {
					t.Fatalf("restored a marker at %d, want none", rs.marker.Offset)
				}
				return
			}
			if rs == nil || rs.marker.Offset != tc.offset {
				t.Fatalf("marker %+v, want the one at offset %d", rs, tc.offset)
			}
			got := map[string]int{}
			for _, a := range rs.agents {
				id, _, _ := readString(a[2:])
				got[id] = slices.IndexFunc(snap[id], func(s []byte) bool { return bytes.Equal(s, a) })
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("restored versions %v, want %v", got, tc.want)
			}
			if p := strings.Join(rs.problems, "; "); (tc.problems == "") != (p == "") || !strings.Contains(p, tc.problems) {
				t.Errorf("problems %q, want %q", p, tc.problems)
			}
			if tc.stale != nil && !slices.Equal(rs.stale, tc.stale) && len(rs.stale)+len(tc.stale) > 0 {
				t.Errorf("stale keys %q, want %q", rs.stale, tc.stale)
			}
		})
	}
}

// The duplicate filter's pieces of the marker's two generations are
// restored; pieces of other generations, or beyond the marker's counts, are
// not, and are reported stale (deleted by the next owner's first
// checkpoint), as are keys of other terms.
func TestStateScanDedupPieces(t *testing.T) {
	piece := func(term, seq, gen uint64, n int, b string) scanRec {
		return scanRec{string(appendDedupKey(nil, gen, n)), appendDedupPiece(appendEnvelope(nil, term, seq), gen, n, []byte(b))}
	}
	m := checkpointMarker{Term: 7, Seq: 2, Topic: "agent-events", Group: "vigil", Offset: 5, DedupGen: 4, DedupCur: 2, DedupPrev: 1}
	recs := []scanRec{
		piece(6, 1, 4, 0, "old term"),
		piece(7, 1, 2, 0, "gone gen"), piece(7, 1, 3, 0, "prev-0.."), piece(7, 1, 4, 0, "cur-0..."),
		piece(7, 2, 4, 1, "cur-1..."), piece(7, 2, 4, 2, "beyond.."),
		{markerKey, m.appendPayload(appendEnvelope(nil, 7, 2))},
	}
	s := newStateScan()
	for i, r := range recs {
		s.add(int64(i), []byte(r.key), r.value)
	}
	rs := s.result()
	if got := fmt.Sprintf("%q %q", rs.dedupCur, rs.dedupPrev); got != `["cur-0..." "cur-1..."] ["prev-0.."]` || len(rs.problems) > 0 {
		t.Errorf("pieces %s, problems %v", got, rs.problems)
	}
	if want := []string{string(appendDedupKey(nil, 2, 0)), string(appendDedupKey(nil, 4, 2))}; !slices.Equal(rs.stale, want) {
		t.Errorf("stale keys %q, want %q", rs.stale, want)
	}
	s = newStateScan()
	for i, r := range slices.Delete(slices.Clone(recs), 3, 4) {
		s.add(int64(i), []byte(r.key), r.value)
	}
	if p := strings.Join(s.result().problems, "; "); !strings.Contains(p, "2 of 3 pieces") {
		t.Errorf("a piece missing: problems %q", p)
	}
}

// A partition resumes at its checkpoint unless the committed offset is ahead
// of it, or the checkpoint names no group (older than version 3) and the
// committed offset is behind it.
func TestResumeAt(t *testing.T) {
	for _, tc := range []struct {
		committed, ckpt int64
		bound           bool
		want            int64
	}{
		{-2, 100, true, 100}, // no commit (kafka-go's FirstOffset)
		{-1, 100, true, 100},
		{40, 100, true, 100},  // died between checkpoint and commit
		{100, 100, true, 100}, // the usual case
		{150, 100, true, 150}, // moved by hand
		{40, 100, false, 40},  // maybe another group's: skip nothing
		{100, 100, false, 100},
		{150, 100, false, 150},
	} {
		if got, why := resumeAt(tc.committed, tc.ckpt, tc.bound); got != tc.want || why == "" {
			t.Errorf("resumeAt(%d, %d, %v) = %d %q, want %d", tc.committed, tc.ckpt, tc.bound, got, why, tc.want)
		}
	}
}

// A checkpoint is this group's checkpoint of its partition of its events
// topic, or restore refuses it with an error that says what to do (issue
// 12: a second group restored the first one's checkpoints and consumed
// nothing). A marker older than version 3 names no group: it is taken only
// from a group that has committed an offset for the partition.
func TestCheckpointBinding(t *testing.T) {
	r := &Runtime{cfg: DefaultRuntimeConfig()}
	r.cfg.Group = "other"
	for _, tc := range []struct {
		name      string
		m         checkpointMarker
		committed int64
		want      []string // in the error; nil: accepted
	}{
		{name: "this group's", m: checkpointMarker{Group: "other", Topic: "agent-events", Partition: 3}, committed: -2},
		{name: "another group's", m: checkpointMarker{Group: "vigil", Topic: "agent-events", Partition: 3}, committed: -2,
			want: []string{`consumer group "vigil"`, `group "other"`, "kafka.state_topic", "other-state", "vigil-state"}},
		{name: "another group's, with commits of its own", m: checkpointMarker{Group: "vigil", Topic: "agent-events", Partition: 3}, committed: 50,
			want: []string{`consumer group "vigil"`}},
		{name: "another topic's", m: checkpointMarker{Group: "other", Topic: "vigil-repartition", Partition: 3}, committed: 5,
			want: []string{"vigil-repartition partition 3", "agent-events partition 3", "kafka.state_topic"}},
		{name: "another partition's", m: checkpointMarker{Group: "other", Topic: "agent-events", Partition: 1}, committed: 5,
			want: []string{"agent-events partition 1"}},
		{name: "unbound, committed", m: checkpointMarker{Topic: "agent-events", Partition: 3, Offset: 90}, committed: 40},
		{name: "unbound, nothing committed", m: checkpointMarker{Topic: "agent-events", Partition: 3, Offset: 90}, committed: -2,
			want: []string{"names no consumer group", `group "other" has committed no offset`, "kafka.state_topic", "commit offset 90"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.foreign(&tc.m, 3, tc.committed)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, errStatePermanent) {
				t.Fatalf("error %v, want one wrapping errStatePermanent", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
		})
	}
	if o := (&Runtime{cfg: DefaultRuntimeConfig()}).foreign(&checkpointMarker{Group: "x", Topic: "agent-events"}, 0, 1); !strings.Contains(o.Error(), "vigil-state-2") {
		t.Errorf("group vigil on vigil-state is told to use vigil-state: %v", o)
	}

	// The scan records the binding of every marker, not only the last.
	s := newStateScan()
	for i, m := range []checkpointMarker{{Topic: "agent-events"}, {Group: "vigil", Topic: "agent-events"}, {Group: "other", Topic: "agent-events"}} {
		m.Term, m.Seq = uint64(i+1), 1
		v := m.appendPayload(appendEnvelope(nil, m.Term, m.Seq))
		if m.Group == "" { // a version 2 marker: no group at its end
			v = v[:len(v)-1]
			v[12] = 2 // after the envelope (11 bytes here) and the magic
		}
		s.add(int64(i), []byte(markerKey), v)
	}
	if len(s.bindings) != 3 || s.result().marker.Group != "other" {
		t.Errorf("bindings %v, last marker %+v", s.bindings, s.result().marker)
	}
}

func TestMarkerRoundTripAndGarbage(t *testing.T) {
	p, _ := NewPipeline(DefaultConfig(), nil)
	m := checkpointMarker{Term: 1 << 60, Seq: 300, Topic: "agent-events", Partition: 5, Offset: 1 << 40, Group: "vigil",
		State: p.AppendPartitionState(nil), Agents: 10000, Classes: 12, DedupGen: 1 << 40, DedupCur: 3, DedupPrev: 70,
		Policy: (&Revoker{recent: map[string][]critical{"a": {{at: 5}}}}).AppendBinary(nil)}
	v := m.appendPayload(appendEnvelope(nil, m.Term, m.Seq))
	// Markers of versions 2 (before the group was recorded) and 1 (before
	// the policy's state was kept) still read, bound to no group.
	_, _, p3, _ := parseEnvelope(v)
	v2 := append([]byte(nil), p3[:len(p3)-len(m.Group)-1]...)
	v2[1] = 2
	if got, err := parseMarker(1, 1, v2); err != nil || got.Group != "" || !bytes.Equal(got.Policy, m.Policy) || got.Agents != m.Agents {
		t.Errorf("version 2 marker: %+v, %v", got, err)
	}
	v1 := append([]byte(nil), v2[:len(v2)-len(m.Policy)-1]...)
	v1[1] = 1
	if got, err := parseMarker(1, 1, v1); err != nil || got.Group != "" || got.Policy != nil || got.Agents != m.Agents {
		t.Errorf("version 1 marker: %+v, %v", got, err)
	}
	// Version 3 on, a marker always names its group.
	if _, err := parseMarker(1, 1, (&checkpointMarker{Topic: "agent-events"}).appendPayload(nil)); !errors.Is(err, ErrState) {
		t.Errorf("a version 3 marker without a group: %v, want ErrState", err)
	}
	term, seq, payload, err := parseEnvelope(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseMarker(term, seq, payload)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(m) {
		t.Fatalf("round trip: %+v, %v\nwant %+v", got, err, m)
	}
	for n := range len(v) {
		term, seq, payload, err := parseEnvelope(v[:n])
		if err == nil {
			_, err = parseMarker(term, seq, payload)
		}
		if !errors.Is(err, ErrState) {
			t.Errorf("truncated to %d bytes: %v, want ErrState", n, err)
		}
	}
	if k := string(appendAgentKey(nil, "\x00marker")); k == markerKey || !strings.HasPrefix(k, agentKeyEscape) {
		t.Errorf("an agent id that looks like a vigil key is not escaped: %q", k)
	}
}

// Restoring never panics, whatever the state topic holds.
func FuzzRestoreState(f *testing.F) {
	p, _ := NewPipeline(DefaultConfig(), nil)
	for i := range 3 {
		e := ev{id: fmt.Sprint(i), agent: "a", target: "t", action: "x", ts: t0}
		_ = p.Process([]byte(e.json()))
	}
	a, _ := p.AppendAgentState(nil, "a")
	c, _ := p.AppendClassState(nil, "worker")
	f.Add(a)
	f.Add(c)
	f.Add(p.AppendPartitionState(nil))
	m := checkpointMarker{Term: 1, Seq: 1, Topic: "t", Group: "g", Offset: 3, Agents: 1}
	f.Add(m.appendPayload(appendEnvelope(nil, 1, 1)))
	f.Fuzz(func(t *testing.T, data []byte) {
		q, _ := NewPipeline(DefaultConfig(), nil)
		_ = q.RestorePartitionState(data)
		_ = q.RestoreClass(data)
		_ = q.RestoreAgent(data)
		s := newStateScan()
		s.add(0, []byte("k"), data)
		s.add(1, []byte(markerKey), data)
		s.result()
	})
}
