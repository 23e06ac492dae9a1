package features

import (
	"strconv"
	"testing"
	"time"
)

// BenchmarkDecode decodes a typical ~350-byte event (no escapes).
func BenchmarkDecode(b *testing.B) {
	benchDecode(b, typicalEvent)
}

// BenchmarkDecodeEscaped decodes an event whose strings need unescaping and
// that carries unknown fields.
func BenchmarkDecodeEscaped(b *testing.B) {
	benchDecode(b, []byte(obj(append(with(with(fullFields(),
		"agent_id", `"spiffe:\/\/bank.example\/agent\/caf\u00e9-bot-07"`),
		"action", `"POST \"\/v1\/transfers\""`),
		kv{"trace", `{"id":"4bf92f3577b34da6","spans":[1,2,{"k":null}],"ok":true}`}))))
}

func benchDecode(b *testing.B, in []byte) {
	var d Decoder
	var e Event
	if err := d.Decode(in, &e); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(in, &e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeInvalid: the cost of rejecting an event (the error is
// allocated).
func BenchmarkDecodeInvalid(b *testing.B) {
	in := []byte(obj(without(fullFields(), "decision")))
	var d Decoder
	var e Event
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if d.Decode(in, &e) == nil {
			b.Fatal("accepted")
		}
	}
}

func BenchmarkParseRFC3339(b *testing.B) {
	for _, s := range []string{"2026-03-02T09:15:03Z", "2026-03-02T10:15:03.123456789+01:00"} {
		b.Run(s, func(b *testing.B) {
			in := []byte(s)
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := ParseRFC3339(in); !ok {
					b.Fatal("rejected")
				}
			}
		})
	}
}

// BenchmarkWindowAdd is the per-event feature path after decoding: Observe
// against the agent's and the peer group's seen sets, then Window.Add. Events
// rotate through 64 targets and 16 actions so the sets see a realistic mix of
// known and new items.
func BenchmarkWindowAdd(b *testing.B) {
	var d Decoder
	var e Event
	if err := d.Decode(typicalEvent, &e); err != nil {
		b.Fatal(err)
	}
	targets := make([][]byte, 64)
	for i := range targets {
		targets[i] = []byte("spiffe://bank.example/svc/service-" + strconv.Itoa(i))
	}
	actions := make([][]byte, 16)
	for i := range actions {
		actions[i] = []byte("POST /v1/op-" + strconv.Itoa(i))
	}
	agent, peer := NewSeenSet(256), NewSeenSet(4096)
	var w Window
	w.Reset(WindowIndex(e.TS, int64(5*time.Minute)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e.TargetID, e.Action = targets[i&63], actions[(i>>2)&15]
		flags, bucket := Observe(&e, &agent, &peer, nil, nil)
		w.Add(&e, flags, bucket)
		i++
	}
}

func BenchmarkWindowVector(b *testing.B) {
	w := targetWindow(100, "t")
	b.ReportAllocs()
	for b.Loop() {
		_ = w.Vector(int64(5 * time.Minute))
	}
}

func BenchmarkDedupSeen(b *testing.B) {
	d := NewDedup(int64(time.Hour), 1<<16)
	id := make([]byte, 0, 32)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id = strconv.AppendInt(append(id[:0], "evt-"...), int64(i), 10)
		d.Seen(id, t0+int64(i)*int64(time.Millisecond))
		i++
	}
}

// BenchmarkDedupCheck: Check of a new id with the content hash of a typical
// event (ContentHash included).
func BenchmarkDedupCheck(b *testing.B) {
	d := NewDedup(int64(time.Hour), 1<<16)
	id := make([]byte, 0, 32)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id = strconv.AppendInt(append(id[:0], "evt-"...), int64(i), 10)
		d.Check(id, ContentHash(typicalEvent), t0+int64(i)*int64(time.Millisecond))
		i++
	}
}

// BenchmarkContentHash hashes a typical ~350-byte event.
func BenchmarkContentHash(b *testing.B) {
	b.SetBytes(int64(len(typicalEvent)))
	b.ReportAllocs()
	for b.Loop() {
		ContentHash(typicalEvent)
	}
}

func BenchmarkHash64(b *testing.B) {
	in := []byte("spiffe://bank.example/agent/payments-bot-07")
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		Hash64(in, 1)
	}
}

// BenchmarkCheckID: the identity-field check Decode runs on a typical agent_id.
func BenchmarkCheckID(b *testing.B) {
	s := []byte("spiffe://bank.example/agent/payments-bot-07")
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		if checkID(s) != "" {
			b.Fatal()
		}
	}
}
