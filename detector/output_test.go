package detector

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/features"
)

// A dead letter is bounded whatever the message: key, value and detail are
// cut to their bounds, and it keeps the whole value's size and digest (and
// the key's, when the key is cut); what fits is kept whole, as a copy.
func TestNewDeadLetterIsBounded(t *testing.T) {
	ts := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name           string
		key, value     []byte
		detail         string
		keyCut, cut    bool
		wantKey, wantV int // lengths kept
	}{
		{name: "small", key: []byte("agent-a"), value: []byte(`{"event_id":"e1"`), detail: "bad json",
			wantKey: 7, wantV: 16},
		{name: "no key, no value", key: nil, value: nil},
		{name: "empty value", key: []byte{}, value: []byte{}},
		{name: "at the bounds", key: bytes.Repeat([]byte("k"), MaxDeadLetterKey), value: bytes.Repeat([]byte("v"), MaxDeadLetterValue),
			wantKey: MaxDeadLetterKey, wantV: MaxDeadLetterValue},
		{name: "value as large as the broker takes", key: []byte("a"), value: bytes.Repeat([]byte("v"), 1<<20-100),
			cut: true, wantKey: 1, wantV: MaxDeadLetterValue},
		{name: "key too", key: bytes.Repeat([]byte("k"), 60<<10), value: bytes.Repeat([]byte("x"), features.MaxEventSize+1),
			keyCut: true, cut: true, wantKey: MaxDeadLetterKey, wantV: MaxDeadLetterValue},
		{name: "key only", key: bytes.Repeat([]byte("k"), MaxDeadLetterKey+1), value: []byte("{}"),
			keyCut: true, cut: true, wantKey: MaxDeadLetterKey, wantV: 2},
		{name: "long detail", value: []byte("x"), detail: strings.Repeat("é", 3000), wantV: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDeadLetter("agent-events", 3, 42, tc.key, tc.value, ts, features.ReasonTooLarge, tc.detail)
			if d.Topic != "agent-events" || d.Partition != 3 || d.Offset != 42 || !d.Time.Equal(ts) || d.Reason != features.ReasonTooLarge {
				t.Errorf("coordinates: %+v", d)
			}
			if len(d.Key) != tc.wantKey || !bytes.Equal(d.Key, tc.key[:tc.wantKey]) || (d.Key == nil) != (tc.key == nil) {
				t.Errorf("key: %d bytes, want the first %d of %d", len(d.Key), tc.wantKey, len(tc.key))
			}
			if len(d.Value) != tc.wantV || !bytes.Equal(d.Value, tc.value[:tc.wantV]) || (d.Value == nil) != (tc.value == nil) {
				t.Errorf("value: %d bytes, want the first %d of %d", len(d.Value), tc.wantV, len(tc.value))
			}
			if d.ValueSize != len(tc.value) || d.ValueSHA256 != sha256.Sum256(tc.value) {
				t.Errorf("value size %d, digest %x; want %d, %x", d.ValueSize, d.ValueSHA256, len(tc.value), sha256.Sum256(tc.value))
			}
			if size, sum := d.ValueDigest(); size != len(tc.value) || sum != sha256.Sum256(tc.value) {
				t.Errorf("ValueDigest: %d, %x", size, sum)
			}
			if d.Truncated() != tc.cut || d.KeyCut != tc.keyCut {
				t.Errorf("Truncated %v, KeyCut %v; want %v, %v", d.Truncated(), d.KeyCut, tc.cut, tc.keyCut)
			}
			if tc.keyCut && (d.KeySize != len(tc.key) || d.KeySHA256 != sha256.Sum256(tc.key)) {
				t.Errorf("key size %d, digest %x; want %d and the whole key's", d.KeySize, d.KeySHA256, len(tc.key))
			}
			if !tc.keyCut && (d.KeySize != 0 || d.KeySHA256 != [sha256.Size]byte{}) {
				t.Errorf("key size and digest set for a key kept whole")
			}
			switch {
			case len(tc.detail) <= MaxDeadLetterDetail && d.Detail != tc.detail:
				t.Errorf("detail %q, want %q", d.Detail, tc.detail)
			case len(tc.detail) > MaxDeadLetterDetail && (len(d.Detail) > MaxDeadLetterDetail || !utf8.ValidString(d.Detail) ||
				!strings.HasSuffix(d.Detail, "…") || !strings.HasPrefix(tc.detail, strings.TrimSuffix(d.Detail, "…"))):
				t.Errorf("long detail cut to %d bytes: %.40q…", len(d.Detail), d.Detail)
			}
			// Copies: the reader's buffers are reused.
			if len(tc.value) > 0 {
				tc.value[0] ^= 0xff
				if d.Value[0] == tc.value[0] {
					t.Error("value not copied")
				}
			}
			if len(tc.key) > 0 {
				tc.key[0] ^= 0xff
				if d.Key[0] == tc.key[0] {
					t.Error("key not copied")
				}
			}
		})
	}
	// A dead letter made without NewDeadLetter: the digest of what it has.
	d := DeadLetter{Value: []byte("abc")}
	if size, sum := d.ValueDigest(); size != 3 || sum != sha256.Sum256([]byte("abc")) || d.Truncated() {
		t.Errorf("ValueDigest of a literal: %d, %x; truncated %v", size, sum, d.Truncated())
	}
}

// The source headers of a message read from the repartition topic point
// its dead letter at the producer's message, unless they are not the
// Repartitioner's (a topic name Kafka would not take).
func TestSourceOfIgnoresForeignTopic(t *testing.T) {
	hs := func(topic string) []kafka.Header {
		return []kafka.Header{{Key: HeaderSourceTopic, Value: []byte(topic)}, {Key: HeaderSourcePartition, Value: []byte("4")},
			{Key: HeaderSourceOffset, Value: []byte("17")}}
	}
	for _, tc := range []struct {
		topic string
		want  string
	}{
		{"agent-events", "agent-events"},
		{strings.Repeat("t", 250), "vigil-repartition"},
		{"a b\ndead-letter topic=x", "vigil-repartition"},
	} {
		d := DeadLetter{Topic: "vigil-repartition", Partition: 1, Offset: 2}
		sourceOf(&d, hs(tc.topic))
		if d.Topic != tc.want || (tc.want == "agent-events") != (d.Partition == 4 && d.Offset == 17) {
			t.Errorf("source topic %.30q: dead letter at %s/%d/%d", tc.topic, d.Topic, d.Partition, d.Offset)
		}
	}
}
