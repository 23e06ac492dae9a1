package models

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/vigil-sec/vigil/features"
)

func learnedBaseline(t testing.TB) (*Model, *Baseline, *Baseline) {
	t.Helper()
	m := newModel(t)
	rng := rand.New(rand.NewPCG(9, 9))
	var a, p Baseline
	for i := range int64(2000) {
		v := vec(monday+i, float64(5+rng.IntN(20)), 1000*(1+rng.Float64()))
		v.Value[features.NewTargets] = float64(rng.IntN(2))
		var r Result
		m.Evaluate(&v, &a, &p, &r)
		m.Finish(&r)
		m.Sustain(&a, &v, &r)
		m.Learn(&v, &r, &a, &p, m.LearnWeight(r.Score))
	}
	return m, &a, &p
}

// A snapshot restores a baseline that scores every window exactly as the
// original does.
func TestSnapshotRoundTrip(t *testing.T) {
	m, a, p := learnedBaseline(t)
	data, err := a.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baseline snapshot: %d bytes", len(data))
	var b Baseline
	if err := b.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if b != *a {
		t.Fatal("restored baseline differs from the original")
	}
	v := vec(monday+2001, 60, 9000)
	var r1, r2 Result
	m.Evaluate(&v, a, p, &r1)
	m.Evaluate(&v, &b, p, &r2)
	m.Finish(&r1)
	m.Finish(&r2)
	if r1.Score != r2.Score || r1.Z != r2.Z {
		t.Errorf("scores differ after restore: %v vs %v", r1.Score, r2.Score)
	}
}

// Fields are only appended: a shorter payload (an older version) loads with
// the missing fields zero, a longer one (a newer version) loads ignoring the
// extra fields.
func TestSnapshotCompatibility(t *testing.T) {
	_, a, _ := learnedBaseline(t)
	a.hourShareExp[len(a.hourShareExp)-1] = 1.5 // the last field written: an older version lacks it
	data, _ := a.MarshalBinary()
	payload := data[4:] // 'B', version, 2-byte uvarint length (payload ≥ 128 bytes)
	if len(data) < 200 || data[2] < 0x80 {
		t.Fatalf("unexpected header % x", data[:4])
	}
	older := append([]byte{'B', 1}, uvarint(uint64(len(payload)-4))...)
	older = append(older, payload[:len(payload)-4]...)
	var b Baseline
	if err := b.UnmarshalBinary(older); err != nil {
		t.Fatalf("older snapshot: %v", err)
	}
	if b.Windows != a.Windows || b.gauss != a.gauss || b.dayX != a.dayX || b.hourShareExp[len(b.hourShareExp)-1] != 0 {
		t.Errorf("older snapshot: leading fields not restored or trailing ones not zero")
	}
	newer := append([]byte{'B', 2}, uvarint(uint64(len(payload)+16))...)
	newer = append(append(newer, payload...), make([]byte, 16)...)
	if err := b.UnmarshalBinary(newer); err != nil {
		t.Fatalf("newer snapshot: %v", err)
	}
	if b != *a {
		t.Error("newer snapshot: known fields not restored")
	}
	for _, bad := range [][]byte{nil, {'X', 1, 0}, {'B', 0, 0}, {'B', 1, 0x80}, append([]byte{'B', 1, 10}, 1, 2)} {
		if err := b.UnmarshalBinary(bad); !errors.Is(err, ErrSnapshot) {
			t.Errorf("% x: got %v, want ErrSnapshot", bad, err)
		}
	}
}

func uvarint(x uint64) []byte {
	var out []byte
	for x >= 0x80 {
		out = append(out, byte(x)|0x80)
		x >>= 7
	}
	return append(out, byte(x))
}

// FuzzSnapshot: a baseline snapshot from the state topic (anyone who can
// write there chooses it). What decodes re-encodes to the same, and a
// restored baseline — as the agent's and as the peer group's — scores and
// learns windows without panicking, with a score in 0–100.
//
// Run: go test -run='^$' -fuzz=FuzzSnapshot ./models
func FuzzSnapshot(f *testing.F) {
	var b Baseline
	data, _ := b.MarshalBinary()
	f.Add(data)
	m, a, p := learnedBaseline(f)
	for _, x := range []*Baseline{a, p} {
		data, _ := x.MarshalBinary()
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var b Baseline
		if err := b.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("error %v does not wrap ErrSnapshot", err)
			}
			return
		}
		again, _ := b.MarshalBinary()
		var c Baseline
		if err := c.UnmarshalBinary(again); err != nil || c != b {
			t.Fatalf("re-encoding does not round-trip: %v", err)
		}
		peer := b
		for i, v := range []features.Vector{vec(monday+3000, 60, 9000), vec(monday+3001, 0, 0), vec(monday+3013, 5, 1000)} {
			var r Result
			m.CatchUp(v.Index, &b, &peer)
			m.Evaluate(&v, &b, &peer, &r)
			m.Finish(&r)
			m.Sustain(&b, &v, &r)
			if math.IsNaN(r.Score) || r.Score < 0 || r.Score > 100 {
				t.Fatalf("window %d: score %v", i, r.Score)
			}
			m.Learn(&v, &r, &b, &peer, m.LearnWeight(r.Score))
		}
	})
}
