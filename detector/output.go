package detector

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/vigil-sec/vigil/features"
)

// Sink delivers a batch to one destination. Write blocks until the batch is
// durable there or ctx ends; it is called from several partition workers at
// once, so it must be safe for concurrent use. A failed Write is retried with
// the same batch (capped exponential backoff), so a sink sees some batches
// more than once: stable ids (alert_id, request_id, agent + window) make
// outputs idempotent downstream. Errors wrapping ErrPermanent are not
// retried: the Runtime stops with that error and commits nothing past the
// batch. A sink writes the parts of a batch it serves and ignores the rest.
// b's slices are valid only until Write returns; the *Alert and *Revocation
// values are never reused and may be kept.
type Sink interface {
	Name() string
	Write(ctx context.Context, b Batch) error
}

// ErrPermanent is wrapped by a Sink error that retrying cannot fix (the
// destination rejects the data or the configuration is wrong).
var ErrPermanent = errors.New("permanent sink error")

// Batch is what a partition worker writes at once: the outputs produced by
// consecutive messages of one partition.
type Batch struct {
	Topic       string
	Partition   int
	Alerts      []*Alert
	Revocations []*Revocation
	Windows     []WindowRecord
	DeadLetters []DeadLetter
	Outcomes    []Outcome // what became of enforced requests (the closed loop)
}

// Len is the number of outputs in b.
func (b *Batch) Len() int {
	return len(b.Alerts) + len(b.Revocations) + len(b.Windows) + len(b.DeadLetters) + len(b.Outcomes)
}

// urgent reports whether b holds outputs that must not wait for a batch to
// fill: alerts, revocation requests and dead letters go out as soon as the
// worker has caught up; window records may wait (FlushInterval, MaxBatch).
func (b *Batch) urgent() bool {
	return len(b.Alerts)+len(b.Revocations)+len(b.DeadLetters)+len(b.Outcomes) > 0
}

func (b *Batch) reset() {
	clear(b.Alerts)
	clear(b.Revocations)
	clear(b.DeadLetters)
	b.Alerts, b.Revocations, b.Windows, b.DeadLetters = b.Alerts[:0], b.Revocations[:0], b.Windows[:0], b.DeadLetters[:0]
	b.Outcomes = b.Outcomes[:0]
}

// DeadLetter is a message that was not scored (invalid or late), with why.
// Duplicates are not dead letters: they are dropped and counted. Topic,
// Partition and Offset say where the producer wrote it: for a message read
// from the repartition topic, where the Repartitioner read it.
//
// A dead letter is bounded whatever the message (NewDeadLetter): its Key,
// Value and Detail are cut to MaxDeadLetterKey, MaxDeadLetterValue and
// MaxDeadLetterDetail bytes, and it keeps the size and SHA-256 digest of
// the message's value (and of its key, when that is cut), so that every
// sink can write it and the original can still be identified.
type DeadLetter struct {
	Topic     string
	Partition int
	Offset    int64
	Key       []byte          // the message's key, cut to MaxDeadLetterKey bytes
	Value     []byte          // the message's value, cut to MaxDeadLetterValue bytes
	Time      time.Time       // the message's timestamp
	Reason    features.Reason // bounded: the decoder's reasons, or ReasonLate
	Detail    string          // the error, for people (cut to MaxDeadLetterDetail bytes)
	// ValueSize and ValueSHA256 are the size and digest of the message's
	// whole value.
	ValueSize   int
	ValueSHA256 [sha256.Size]byte
	// KeyCut says Key was cut; then KeySize and KeySHA256 are the size
	// and digest of the message's whole key.
	KeyCut    bool
	KeySize   int
	KeySHA256 [sha256.Size]byte
}

// Bounds of a dead letter (NewDeadLetter). Everything in a message, its
// size included, is chosen by whoever wrote it, and a dead letter must fit
// every output whatever the message: a Kafka topic (max.message.bytes,
// 1 MiB by default, and the dead-letter sink's max_message_bytes), a log
// line, an HTTP body. With them a dead letter's key, value and detail take
// at most 18 KiB, so dead letters fit a topic that takes 32 KiB messages.
// The value bound is a quarter of features.MaxEventSize: an event rejected
// for its size is kept in part; smaller invalid events, whole.
const (
	MaxDeadLetterKey    = 1 << 10
	MaxDeadLetterValue  = 16 << 10
	MaxDeadLetterDetail = 1 << 10
)

// NewDeadLetter returns the dead letter of the message key/value at
// topic/partition/offset with timestamp ts, rejected for reason with
// detail: key, value and detail copied and cut to their bounds
// (MaxDeadLetterKey, MaxDeadLetterValue, MaxDeadLetterDetail), with the
// size and SHA-256 digest of the value (and of the key when it is cut).
// A cut detail ends in "…" and stays valid UTF-8 where detail was.
func NewDeadLetter(topic string, partition int, offset int64, key, value []byte, ts time.Time, reason features.Reason, detail string) DeadLetter {
	d := DeadLetter{
		Topic: topic, Partition: partition, Offset: offset, Time: ts, Reason: reason,
		Detail:    cutString(detail, MaxDeadLetterDetail),
		ValueSize: len(value), ValueSHA256: sha256.Sum256(value),
	}
	if value != nil {
		d.Value = bytes.Clone(value[:min(len(value), MaxDeadLetterValue)])
	}
	if key != nil {
		d.Key = bytes.Clone(key[:min(len(key), MaxDeadLetterKey)])
	}
	if len(key) > MaxDeadLetterKey {
		d.KeyCut, d.KeySize, d.KeySHA256 = true, len(key), sha256.Sum256(key)
	}
	return d
}

// Truncated reports whether d's key or value is shorter than the message's.
func (d *DeadLetter) Truncated() bool { return d.KeyCut || len(d.Value) < d.ValueSize }

// ValueDigest returns the size and SHA-256 digest of the message's value:
// ValueSize and ValueSHA256, or those of Value for a dead letter not made
// by NewDeadLetter.
func (d *DeadLetter) ValueDigest() (int, [sha256.Size]byte) {
	if d.ValueSHA256 == ([sha256.Size]byte{}) || d.ValueSize < len(d.Value) {
		return len(d.Value), sha256.Sum256(d.Value)
	}
	return d.ValueSize, d.ValueSHA256
}

// cutString cuts s to at most n bytes (n ≥ 3) on a rune boundary, ending
// the cut in "…".
func cutString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// WindowRecord is one closed agent window: its features, what the baseline
// expected, and the score (the ClickHouse windows table; Alertmanager uses
// it to resolve alerts when an agent is normal again). Agent + Start
// identify it.
type WindowRecord struct {
	AgentID    string
	AgentClass string
	Start, End int64 // Unix ns
	HourOfWeek int
	Events     int64
	// Value and Expected in readable units, and z, per feature
	// (features.Feature order; Scored false: not scored, e.g. no data).
	Value, Expected, Z [features.NumFeatures]float64
	Scored             [features.NumFeatures]bool
	Score              float64
	Severity           Severity
	Cold               bool   // not scored: no warm baseline yet
	Source             string // models.SourceAgent or SourcePeerGroup
	BaselineWindows    int
}

// newWindowRecord fills a record from a closed window's score.
func newWindowRecord(w *WindowRecord, s *WindowScore) {
	r := s.Result
	*w = WindowRecord{
		AgentID: s.AgentID, AgentClass: s.AgentClass,
		Start: s.Vector.Start, End: s.Vector.End, HourOfWeek: s.Vector.HourOfWeek,
		Events: int64(s.Vector.Value[features.EventCount]),
		Value:  r.Value, Expected: r.Expected, Z: r.Z, Scored: r.Scored,
		Score: float64(int(r.Score*10+0.5)) / 10, Severity: s.Severity, Cold: r.Cold,
		Source: r.Source, BaselineWindows: r.Windows,
	}
}
