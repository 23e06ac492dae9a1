package features

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzDecode checks Decode on arbitrary input:
//   - it never panics, and decoding the same input with a Decoder that has
//     just decoded something else gives the same result;
//   - an error wraps ErrInvalidEvent and carries a FieldError with a known
//     reason;
//   - on success every required field is present and non-empty, every id
//     passes checkID, the enums are in range and ts is within years 2000–2199;
//   - on success, when the input is valid JSON, encoding/json reads the same
//     contract fields (string fields byte for byte, numbers, enums, attested,
//     and ts whenever time.Parse accepts it).
//
// Run: go test -run='^$' -fuzz=FuzzDecode ./features
func FuzzDecode(f *testing.F) {
	for _, c := range validDecodeCases() {
		f.Add([]byte(c.in))
	}
	for _, c := range invalidDecodeCases() {
		if len(c.in) < 4096 {
			f.Add([]byte(c.in))
		}
	}
	f.Add(typicalEvent)
	other := []byte(obj(with(fullFields(), "resource", `"\u00e9\"x\" \ud83d\ude80 `+"long enough to fill some scratch space"+`"`)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Decoder
		var e Event
		err := d.Decode(b, &e)

		// Same result from a decoder with state left over from another event.
		var d2 Decoder
		var e2 Event
		if err := d2.Decode(other, &e2); err != nil {
			t.Fatalf("other event: %v", err)
		}
		err2 := d2.Decode(b, &e2)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("fresh decoder: %v; reused decoder: %v", err, err2)
		}

		if err != nil {
			if !errors.Is(err, ErrInvalidEvent) {
				t.Fatalf("error %v does not wrap ErrInvalidEvent", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FieldError", err)
			}
			switch fe.Reason {
			case ReasonBadJSON, ReasonTooLarge:
				if fe.Field != "" {
					t.Fatalf("%s error names field %q", fe.Reason, fe.Field)
				}
			case ReasonMissingField, ReasonBadType, ReasonBadValue, ReasonBadTimestamp, ReasonBadID, ReasonDuplicateKey:
				if fe.Field == "" {
					t.Fatalf("%s error names no field: %v", fe.Reason, err)
				}
			default:
				t.Fatalf("unknown reason %q", fe.Reason)
			}
			return
		}
		got := flatten(&e)
		if got2 := flatten(&e2); got2 != got {
			t.Fatalf("reused decoder differs:\n%s", got2.diff(got))
		}
		if got.EventID == "" || got.AgentID == "" || got.TargetID == "" || got.Action == "" {
			t.Fatalf("accepted with an empty required field: %+v", got)
		}
		for _, id := range [...][]byte{e.EventID, e.AgentID, e.AgentClass, e.TargetID, e.CredentialID} {
			if len(id) > 0 && checkID(id) != "" {
				t.Fatalf("accepted id %q: %s", id, checkID(id))
			}
		}
		if got.Decision != Allow && got.Decision != Deny {
			t.Fatalf("accepted with decision %d", got.Decision)
		}
		if got.TS < minTS || got.TS > maxTS {
			t.Fatalf("accepted ts %d (%s), outside years 2000-2199", got.TS, time.Unix(0, got.TS).UTC())
		}
		if got.DataClass > DataRestricted || got.Status > StatusTimeout || got.Auth > AuthNone || got.Attested > AttestFalse {
			t.Fatalf("enum out of range: %+v", got)
		}
		if got.BytesIn < -1 || got.BytesOut < -1 || got.LatencyMS < 0 || got.Amount < 0 ||
			math.IsNaN(got.LatencyMS) || math.IsInf(got.LatencyMS, 0) || math.IsNaN(got.Amount) || math.IsInf(got.Amount, 0) {
			t.Fatalf("number out of range: %+v", got)
		}
		if got.HasLatency == false && got.LatencyMS != 0 {
			t.Fatalf("latency %v without HasLatency", got.LatencyMS)
		}

		if !json.Valid(b) {
			// Decode is more lenient than JSON about numbers (known bug
			// lenient-numbers, see TestDecodeRejectsNonJSONNumbers); there
			// is no reference to compare with.
			return
		}
		r, err := refDecode(b)
		if err != nil {
			t.Fatalf("Decode accepted %q but encoding/json says: %v", b, err)
		}
		// A reader decoding into a struct (case-insensitive names) sees
		// the same identity vigil scored.
		var ids struct {
			EventID      string `json:"event_id"`
			AgentID      string `json:"agent_id"`
			AgentClass   string `json:"agent_class"`
			TargetID     string `json:"target_id"`
			CredentialID string `json:"credential_id"`
		}
		if err := json.Unmarshal(b, &ids); err != nil || ids.EventID != got.EventID || ids.AgentID != got.AgentID ||
			ids.AgentClass != got.AgentClass || ids.TargetID != got.TargetID || ids.CredentialID != got.CredentialID {
			t.Fatalf("Decode accepted %q; a struct reader sees %+v (%v)", b, ids, err)
		}
		want := r.f
		// ts: compare whenever time.Parse accepts it (it rejects leap seconds
		// and lower-case t/z, which RFC 3339 allows and Decode accepts).
		if r.tsOK {
			if y := r.t.UTC().Year(); y < 2000 || y > 2199 {
				t.Fatalf("accepted ts %s (year %d) as %s", r.m["ts"], y, time.Unix(0, got.TS).UTC().Format(time.RFC3339Nano))
			}
		} else {
			want.TS = got.TS
		}
		if got != want {
			for _, s := range []string{got.EventID, got.AgentID, got.AgentClass, got.TargetID, got.Action,
				got.Resource, got.CredentialID, got.SrcIP, got.SigKey} {
				if !utf8.ValidString(s) {
					t.Fatalf("invalid UTF-8 passed through: %q", s)
				}
			}
			for _, k := range []string{"data_class", "status", "auth", "attested"} {
				if r.m[k] == nil && countKey(b, k) > 1 {
					t.Fatalf("duplicate %q ending in null", k)
				}
			}
			t.Fatalf("Decode and encoding/json differ on %q:\n%s", b, got.diff(want))
		}
	})
}

// countKey counts the top-level members of the JSON object b named k.
func countKey(b []byte, k string) int {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return 0
	}
	n := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return n
		}
		if tok == k {
			n++
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil && err != io.EOF {
			return n
		}
	}
	return n
}

// FuzzParseRFC3339 compares ParseRFC3339 with time.Parse(time.RFC3339Nano).
// The two accept slightly different languages (time.Parse rejects leap
// seconds and lower-case t/z; it falls back to a laxer parser on some inputs
// ParseRFC3339 rejects), so on arbitrary input it only checks that when both
// accept, they agree on the instant. It also formats the instant n (any int64
// Unix nanoseconds) in a fixed zone of offMinutes (clamped to ±23:59) with
// time.Format(RFC3339Nano): ParseRFC3339 must accept that canonical form and
// return n.
//
// Run: go test -run='^$' -fuzz=FuzzParseRFC3339 ./features
func FuzzParseRFC3339(f *testing.F) {
	for _, s := range []string{
		"2026-03-02T09:15:03Z", "2026-03-02T09:15:03.123456789Z", "2026-03-02T10:15:03+01:00",
		"2026-03-02T03:45:03.5-05:30", "2016-12-31T23:59:60Z", "2026-03-02t09:15:03z", "2024-02-29T00:00:00Z",
		"2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "yesterday", "2026-03-02T09:15:03",
		"2026-03-02T09:15:03.123456789123Z", "1970-01-01T00:00:00Z", "2262-04-11T23:47:16.854775807Z",
	} {
		f.Add(s, int64(1772442903123456789), int16(0))
	}
	f.Add("", int64(math.MaxInt64), int16(23*60+59))
	f.Add("", int64(math.MinInt64), int16(-23*60-59))
	f.Add("", int64(0), int16(-330))
	f.Add("", int64(-1), int16(60))
	f.Fuzz(func(t *testing.T, s string, n int64, offMinutes int16) {
		got, ok := ParseRFC3339([]byte(s))
		if ref, err := time.Parse(time.RFC3339Nano, s); ok && err == nil {
			if ref.Before(time.Unix(0, math.MinInt64)) || ref.After(time.Unix(0, math.MaxInt64)) {
				// Outside what int64 Unix nanoseconds can hold.
				t.Fatalf("ParseRFC3339(%q) = %d, true; the instant does not fit in int64 ns", s, got)
			}
			if got != ref.UnixNano() {
				t.Fatalf("ParseRFC3339(%q) = %s, time.Parse = %s", s,
					time.Unix(0, got).UTC().Format(time.RFC3339Nano), ref.UTC().Format(time.RFC3339Nano))
			}
		}

		off := int(offMinutes) % (24 * 60)
		canon := time.Unix(0, n).In(time.FixedZone("", off*60)).Format(time.RFC3339Nano)
		got, ok = ParseRFC3339([]byte(canon))
		if !ok || got != n {
			t.Fatalf("ParseRFC3339(%q) = %d, %v; want %d, true", canon, got, ok, n)
		}
	})
}

// seenSeed is a real first-seen set: slots per generation, a few hundred
// items observed (it has rotated once).
func seenSeed(slots, items int) []byte {
	s := NewSeenSet(slots)
	for i := range items {
		s.Observe(uint32(Hash64([]byte{byte(i), byte(i >> 8)}, seedCredential) >> 32))
	}
	return s.AppendBinary(nil)
}

// FuzzSeenSet: a first-seen set inside an agent or peer-group snapshot from
// the state topic, restored into a set of 2^(slotsLog%14) slots a
// generation (the same size as the snapshot's, or another: rehashed).
// What decodes re-encodes to the same, holds no more than its slots, and
// answers lookups and records new items (a generation filled up to its last
// slot made lookups loop forever).
//
// Run: go test -run='^$' -fuzz=FuzzSeenSet ./features
func FuzzSeenSet(f *testing.F) {
	f.Add(seenSeed(128, 20), uint8(7))
	f.Add(seenSeed(128, 300), uint8(7))
	f.Add(seenSeed(16, 30), uint8(4))
	f.Add(seenSeed(16, 30), uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, slotsLog uint8) {
		slots := 1 << (slotsLog % 14)
		var s SeenSet
		n, err := s.DecodeFrom(data, slots)
		if err != nil {
			if !errors.Is(err, ErrSeenSnapshot) {
				t.Fatalf("error %v does not wrap ErrSeenSnapshot", err)
			}
			return
		}
		if n <= 0 || n > len(data) {
			t.Fatalf("used %d of %d bytes", n, len(data))
		}
		if s.Len() > 2*s.Slots() || s.Slots() < slots {
			t.Fatalf("%d items in %d slots a generation, configured %d", s.Len(), s.Slots(), slots)
		}
		once := s.AppendBinary(nil)
		var q SeenSet
		if m, err := q.DecodeFrom(once, slots); err != nil || m != len(once) {
			t.Fatalf("re-encoded set: %d of %d bytes, %v", m, len(once), err)
		}
		if twice := q.AppendBinary(nil); !bytes.Equal(once, twice) {
			t.Fatalf("re-encoding is not stable:\n once %x\ntwice %x", once, twice)
		}
		for i := range uint32(3 * s.Slots()) {
			fp := i*0x9e3779b1 | 1
			s.Contains(fp)
			s.Observe(fp)
			if !s.Contains(fp) {
				t.Fatalf("%#x observed, not contained", fp)
			}
		}
	})
}

// FuzzDedupRestore: the duplicate filter's pieces from the state topic
// (data split into pieces at 0xff 0xfe, the current generation's before
// 0xff 0xfd, the previous one's after). Restored ids re-encode to the same
// set of entries; the filter then answers and rotates as usual.
//
// Run: go test -run='^$' -fuzz=FuzzDedupRestore ./features
func FuzzDedupRestore(f *testing.F) {
	d := NewDedup(int64(time.Hour), 64)
	base := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC).UnixNano()
	for i := range 100 {
		d.Check([]byte(fmt.Sprint("e", i)), uint64(i), base+int64(i)*int64(time.Minute))
	}
	gen, start := d.Generation()
	cur, prev := d.AppendGeneration(nil, false), d.AppendGeneration(nil, true)
	f.Add(gen, start, append(append(cur, 0xff, 0xfd), prev...))
	f.Add(gen, start, append(append(cur[:16+16*3:16+16*3], 0xff, 0xfe), cur[16+16*3:]...))
	f.Add(uint64(1), start, []byte("12345678abcdefgh"))
	f.Fuzz(func(t *testing.T, gen uint64, start int64, data []byte) {
		c, p, _ := bytes.Cut(data, []byte{0xff, 0xfd})
		split := func(b []byte) [][]byte {
			if len(b) == 0 {
				return nil
			}
			return bytes.Split(b, []byte{0xff, 0xfe})
		}
		d := NewDedup(int64(time.Hour), 64)
		if err := d.Restore(gen, start, split(c), split(p)); err != nil {
			if !errors.Is(err, ErrDedupSnapshot) {
				t.Fatalf("error %v does not wrap ErrDedupSnapshot", err)
			}
			return
		}
		if d.Len() > len(data)/8 {
			t.Fatalf("%d ids from %d bytes", d.Len(), len(data))
		}
		entries := func(d *Dedup, prev bool) []string {
			b := d.AppendGeneration(nil, prev)
			var out []string
			for i := min(len(b), 16); i+16 <= len(b); i += 16 {
				out = append(out, string(b[i:i+16]))
			}
			slices.Sort(out)
			return out
		}
		q := NewDedup(int64(time.Hour), 64)
		var pieces [2][][]byte
		for i := range pieces {
			if b := d.AppendGeneration(nil, i == 1); len(b) > 0 {
				pieces[i] = [][]byte{b}
			}
		}
		if err := q.Restore(gen, start, pieces[0], pieces[1]); err != nil {
			t.Fatalf("re-encoded filter: %v", err)
		}
		for _, prev := range []bool{false, true} {
			if a, b := entries(d, prev), entries(q, prev); !slices.Equal(a, b) {
				t.Fatalf("previous %v: %d entries re-encode to %d", prev, len(a), len(b))
			}
		}
		for i := range 200 {
			id := []byte(fmt.Sprint("n", i))
			ts := start + int64(i)*int64(time.Minute)
			if v := d.Check(id, 7, ts); v == Unseen {
				if v := d.Check(id, 7, ts); v != Duplicate {
					t.Fatalf("%s checked twice: %v", id, v)
				}
			}
		}
	})
}
