package detector

import (
	"bytes"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/sim"
)

// Evicting idle agents to a spill file and reloading them when they return
// is invisible: the alerts are exactly those of a pipeline that kept every
// agent in memory, and full checkpoints still see every agent.
func TestEvictionIsInvisible(t *testing.T) {
	lines := simLines(t, sim.Config{Seed: 4, Agents: 18, Days: 3, WarmupDays: 1, Incidents: 5})
	cfg := DefaultConfig()
	var want, got []*Alert
	whole, err := NewPipeline(cfg, func(a *Alert) { want = append(want, a) })
	if err != nil {
		t.Fatal(err)
	}
	ev, err := NewPipeline(cfg, func(a *Alert) { got = append(got, a) })
	if err != nil {
		t.Fatal(err)
	}
	ev.TrackChanges()
	sp, err := NewSpillFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	ev.SetStore(sp)
	evicted, maxHeld, maxClasses := 0, 0, 0
	for i, l := range lines {
		whole.Process(l)
		ev.Process(l)
		if i%2000 == 1999 {
			ev.TakeChanges(nil, nil) // as a checkpoint does
			n, err := ev.Evict(ev.stats.MaxTS - int64(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			evicted += n
			maxHeld = max(maxHeld, sp.Len()-ev.evictedClasses)
			maxClasses = max(maxClasses, ev.evictedClasses)
			// A full checkpoint sees every agent, evicted or not, with
			// the same snapshot the uninterrupted pipeline would write.
			if i%20000 == 19999 {
				ids := slices.Sorted(slices.Values(ev.AgentIDs(nil)))
				if wantIDs := slices.Sorted(slices.Values(whole.AgentIDs(nil))); !slices.Equal(ids, wantIDs) {
					t.Fatalf("line %d: agents %d, want %d", i, len(ids), len(wantIDs))
				}
				for _, id := range ids {
					a, _ := ev.AppendAgentState(nil, id)
					b, _ := whole.AppendAgentState(nil, id)
					if !bytes.Equal(a, b) {
						t.Fatalf("line %d: agent %s: snapshot differs after eviction", i, id)
					}
				}
				// So does it every peer group, evicted ones included.
				names := slices.Sorted(slices.Values(ev.ClassNames(nil)))
				if wantNames := slices.Sorted(slices.Values(whole.ClassNames(nil))); !slices.Equal(names, wantNames) {
					t.Fatalf("line %d: peer groups %q, want %q", i, names, wantNames)
				}
				for _, name := range names {
					a, _ := ev.AppendClassState(nil, name)
					b, _ := whole.AppendClassState(nil, name)
					if !bytes.Equal(a, b) {
						t.Fatalf("line %d: peer group %s: snapshot differs after eviction", i, name)
					}
				}
			}
		}
	}
	whole.Flush()
	ev.Flush()
	st := ev.Stats()
	t.Logf("%d lines: %d evictions, up to %d agents evicted at once, %d reloads, %d alerts", len(lines), evicted, maxHeld, st.Reloads, len(got))
	t.Logf("up to %d peer groups evicted at once", maxClasses)
	if maxClasses == 0 {
		t.Error("no peer group was evicted: the scenario must evict groups whose agents are all idle")
	}
	if evicted == 0 || st.Reloads == 0 || st.ReloadErrs != 0 {
		t.Fatalf("evictions %d, reloads %d, reload errors %d: the scenario must evict and reload agents", evicted, st.Reloads, st.ReloadErrs)
	}
	if len(want) == 0 {
		t.Fatal("no alerts")
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("alerts differ with eviction: %d vs %d", len(got), len(want))
		for i := range min(len(got), len(want)) {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Errorf("first difference at %d:\n got %+v\nwant %+v", i, got[i], want[i])
				break
			}
		}
	}
	if s := whole.Stats(); s.Agents != st.Agents || s.Windows != st.Windows {
		t.Errorf("agents %d/%d, windows %d/%d", st.Agents, s.Agents, st.Windows, s.Windows)
	}
}

func TestSpillFile(t *testing.T) {
	sp, err := NewSpillFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	big := bytes.Repeat([]byte{'x'}, 4096)
	for i := range 600 {
		if err := sp.Put(string(rune('a'+i%26))+string(rune(i)), append(big, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	if sp.Len() != 600 {
		t.Fatalf("len %d", sp.Len())
	}
	// Deleting most of them compacts the file; the rest still read back.
	for i := range 500 {
		sp.Delete(string(rune('a'+i%26)) + string(rune(i)))
	}
	if sp.size > 2*sp.live+1<<20 {
		t.Errorf("not compacted: size %d, live %d", sp.size, sp.live)
	}
	for i := 500; i < 600; i++ {
		b, ok, err := sp.Append([]byte("pre"), string(rune('a'+i%26))+string(rune(i)))
		if err != nil || !ok || !bytes.Equal(b, append([]byte("pre"), append(big, byte(i))...)) {
			t.Fatalf("%d: ok %v err %v len %d", i, ok, err, len(b))
		}
	}
	if _, ok, _ := sp.Append(nil, "missing"); ok {
		t.Error("a missing id was found")
	}
}
