package detector

import (
	"context"
	"errors"
	"time"

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
}

// Len is the number of outputs in b.
func (b *Batch) Len() int {
	return len(b.Alerts) + len(b.Revocations) + len(b.Windows) + len(b.DeadLetters)
}

// urgent reports whether b holds outputs that must not wait for a batch to
// fill: alerts, revocation requests and dead letters go out as soon as the
// worker has caught up; window records may wait (FlushInterval, MaxBatch).
func (b *Batch) urgent() bool {
	return len(b.Alerts)+len(b.Revocations)+len(b.DeadLetters) > 0
}

func (b *Batch) reset() {
	clear(b.Alerts)
	clear(b.Revocations)
	clear(b.DeadLetters)
	b.Alerts, b.Revocations, b.Windows, b.DeadLetters = b.Alerts[:0], b.Revocations[:0], b.Windows[:0], b.DeadLetters[:0]
}

// DeadLetter is a message that was not scored (invalid or late), with why.
// Duplicates are not dead letters: they are dropped and counted. Topic,
// Partition and Offset say where the producer wrote it: for a message read
// from the repartition topic, where the Repartitioner read it.
type DeadLetter struct {
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Value     []byte
	Time      time.Time       // the message's timestamp
	Reason    features.Reason // bounded: the decoder's reasons, or ReasonLate
	Detail    string          // the full error, for people
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
