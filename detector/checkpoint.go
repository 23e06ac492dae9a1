package detector

// Checkpoints of a partition's state in the compacted state topic.
//
// Partition P of the events topic keeps its state in partition P of the state
// topic. A checkpoint consistent with events offset O holds exactly the state
// after processing every message below O, and is written only once every
// output of those messages is durable in the sink. It is, in this order:
//
//  1. a record per agent (key: the agent id) and per peer group (key:
//     "\x00class:" + name) that changed since the previous checkpoint;
//  2. the ids the duplicate filter added since then (key
//     "\x00dedup:<generation>:<n>": the filter's generations are append-only,
//     so each checkpoint adds a piece to the current one);
//  3. the marker (key "\x00marker"): the checkpoint's term and sequence
//     number, the consumer group and events topic it was taken for, O, the
//     pipeline-level state (watermark, closed window, event times), how many
//     agents and peer groups the state holds and how many pieces each live
//     generation of the duplicate filter has.
//
// The first checkpoint of a term writes everything (every agent and peer
// group, both filter generations whole) and first deletes (tombstones) the
// keys the restore found but did not use. Then, and only then, the group
// commits O. Records are produced with acks=all in batches sent one after the
// other, the marker in the last one, so the marker is durable only after
// everything it covers. A produce request is never cancelled, only given a
// deadline (see stateWriter.flush), so no record of an attempt lands after
// the writer has moved on to the next one.
//
// Every value carries its checkpoint's term and sequence number. A term is a
// random number a worker draws when it takes a partition over (and keeps
// while the partition stays with it from one generation to the next). So the
// state as of a marker is, for each key, the last record of the marker's term
// written before it; records of other terms are ignored. That rules out three
// kinds of stray records:
//   - a checkpoint that died before its marker (the process crashed, or a
//     produce failed): its records follow the last marker and are ignored;
//     a retry writes them again before its own marker;
//   - a new owner's first checkpoint that died half way: other term, ignored;
//     the previous term's records and marker are intact;
//   - a former owner that has been evicted from the group but has not noticed
//     yet (a "zombie"; kafka-go has no transactions to fence it): other term,
//     ignored. Before it writes a checkpoint a worker also checks that its
//     generation still accepts commits, which narrows this window.
//
// Restore reads the partition from its start to its end and applies the state
// of the last marker. Consuming resumes at the marker's offset O even when the
// committed offset is behind it (the owner died between its marker and its
// commit, or the coordinator refused the commit in a rebalance): every output
// of the messages below O was written before the marker, so skipping them is
// safe, and reprocessing them would count their events twice in the restored
// state. A committed offset ahead of O (offsets moved by hand, or state from
// an older run) wins: the state is restored and consuming starts there. (So
// to reprocess from an earlier offset, also start from an empty state topic.)
//
// A checkpoint is bound to its consumer group and events topic: O is where
// that group's output stands, not another's. A group that finds another
// group's (or topic's) checkpoint as the last one refuses to run and says to
// give it a state topic of its own (restore). It does not start cold
// instead: it would then tombstone the other group's keys as stale in its
// first checkpoint and overwrite its marker (both use the same keys, and
// compaction keeps the last), destroying that group's state, which would
// then find this group's checkpoint. Namespacing the keys by group would let
// groups share the topic, but every restore would then read every group's
// records, and a state topic per group costs nothing. Markers of other
// groups before the last one only draw a warning: compaction leaves them
// there long after the topic is the group's alone again.
//
// Markers before version 3 name no group. Such a checkpoint is taken as the
// group's only if the group has committed an offset for the partition, and
// consuming then resumes at the committed offset even when the checkpoint is
// ahead of it: nothing is skipped on the word of a checkpoint that may be
// another group's (a group that owned it and died between its marker and its
// commit reads a checkpoint interval again). With no committed offset it
// is refused like another group's. (A group that ran an older vigil on
// another group's state committed that group's offsets: reset them.)
//
// Compaction keeps only the last record of a key. It cannot remove a record of
// the last marker's state unless a stray record of the same key follows it —
// a write of a checkpoint that never completed, or a zombie's. Brokers do not
// compact the active segment, so that takes a segment roll and a cleaner run
// between the stray write and the next completed checkpoint. The marker's
// counts detect it: restore then logs an error and counts it in
// vigil_state_restore_incomplete_total, and the missing agents start cold
// (missing duplicate-filter pieces: those ids are forgotten). Delivery is
// unaffected.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/vigil-sec/vigil/features"
)

// Keys of the state topic. Agents are keyed by their id; keys that start with
// NUL are vigil's own (an agent id that starts with NUL, which no real one
// does, is escaped), so the two never meet.
const (
	markerKey      = "\x00marker"
	classKeyPrefix = "\x00class:"
	dedupKeyPrefix = "\x00dedup:"
	agentKeyEscape = "\x00agent:"
)

func appendAgentKey(dst []byte, id string) []byte {
	if strings.HasPrefix(id, "\x00") {
		dst = append(dst, agentKeyEscape...)
	}
	return append(dst, id...)
}

func appendDedupKey(dst []byte, gen uint64, n int) []byte {
	dst = strconv.AppendUint(append(dst, dedupKeyPrefix...), gen, 10)
	return strconv.AppendInt(append(dst, ':'), int64(n), 10)
}

// Every value of the state topic is an envelope: 'v', a version byte, the
// term (uint64) and the sequence number (uvarint) of its checkpoint, then the
// payload, whose first byte says what it is: an agent ('A') or peer-group
// ('C') snapshot, a piece of the duplicate filter ('D': generation and piece
// number (uvarints), then the filter's encoding of its ids: id and content
// hashes, see features.AppendHashes), or the marker ('M').
const (
	envelopeMagic   = 'v'
	envelopeVersion = 1
	dedupMagic      = 'D'
	markerMagic     = 'M'
	markerVersion   = 3 // 2 adds the revocation policy's state, 3 the consumer group
	// 8·dedupPiece bytes bound one piece of the duplicate filter (512 KiB,
	// far below Kafka's default 1 MiB message limit; a multiple of the
	// filter's 16 bytes an id).
	dedupPiece = 64 << 10
	// maxDedupPieces bounds the pieces of one generation a marker may
	// announce: 2^16 pieces of 32Ki ids each, far above any
	// detector.dedup_capacity that fits in memory. Restoring allocates a
	// slot per announced piece, and the next checkpoint deletes each.
	maxDedupPieces = 1 << 16
)

func appendEnvelope(dst []byte, term, seq uint64) []byte {
	dst = append(dst, envelopeMagic, envelopeVersion)
	dst = binary.LittleEndian.AppendUint64(dst, term)
	return binary.AppendUvarint(dst, seq)
}

func parseEnvelope(v []byte) (term, seq uint64, payload []byte, err error) {
	if len(v) < 11 || v[0] != envelopeMagic || v[1] == 0 {
		return 0, 0, nil, fmt.Errorf("%w: no state record header", ErrState)
	}
	term = binary.LittleEndian.Uint64(v[2:])
	seq, n := binary.Uvarint(v[10:])
	if n <= 0 || len(v) == 10+n {
		return 0, 0, nil, fmt.Errorf("%w: truncated state record", ErrState)
	}
	return term, seq, v[10+n:], nil
}

func appendDedupPiece(dst []byte, gen uint64, n int, hashes []byte) []byte {
	dst = binary.AppendUvarint(append(dst, dedupMagic), gen)
	dst = binary.AppendUvarint(dst, uint64(n))
	return append(dst, hashes...)
}

func parseDedupPiece(p []byte) (gen uint64, n int, hashes []byte, ok bool) {
	gen, k := binary.Uvarint(p[1:])
	if k <= 0 {
		return 0, 0, nil, false
	}
	v, k2 := binary.Uvarint(p[1+k:])
	if k2 <= 0 || v > 1<<30 {
		return 0, 0, nil, false
	}
	return gen, int(v), p[1+k+k2:], true
}

// checkpointMarker closes a checkpoint: the state of partition Partition of
// the events topic Topic after every message below Offset, as consumer group
// Group processed them.
type checkpointMarker struct {
	Term, Seq uint64
	Topic     string
	Partition int
	Offset    int64
	// Group is the consumer group that took the checkpoint; version 3 on
	// (never empty), "" in older markers, which are bound to no group.
	Group string
	// State is the pipeline-level state (Pipeline.AppendPartitionState).
	State []byte
	// What the rest of the checkpoint's state holds: agents, peer groups,
	// and pieces of the duplicate filter's generation DedupGen (DedupCur)
	// and of the one before (DedupPrev).
	Agents, Classes     int
	DedupGen            uint64
	DedupCur, DedupPrev int
	// Policy is the revocation policy's state (Revoker.AppendBinary);
	// version 2 on.
	Policy []byte
}

func (m *checkpointMarker) appendPayload(dst []byte) []byte {
	dst = append(dst, markerMagic, markerVersion)
	dst = appendString(dst, m.Topic)
	dst = binary.AppendUvarint(dst, uint64(m.Partition))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Offset))
	dst = binary.AppendUvarint(dst, uint64(len(m.State)))
	dst = append(dst, m.State...)
	dst = binary.AppendUvarint(dst, m.DedupGen)
	for _, v := range [...]int{m.Agents, m.Classes, m.DedupCur, m.DedupPrev} {
		dst = binary.AppendUvarint(dst, uint64(v))
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Policy)))
	dst = append(dst, m.Policy...)
	return appendString(dst, m.Group)
}

func parseMarker(term, seq uint64, p []byte) (checkpointMarker, error) {
	m := checkpointMarker{Term: term, Seq: seq}
	bad := fmt.Errorf("%w: truncated marker", ErrState)
	if len(p) < 2 || p[0] != markerMagic || p[1] == 0 {
		return m, fmt.Errorf("%w: no marker header", ErrState)
	}
	topic, off, err := readString(p[2:])
	if err != nil {
		return m, err
	}
	off += 2
	m.Topic = topic
	uv := func() (uint64, bool) {
		v, n := binary.Uvarint(p[off:])
		if n <= 0 {
			return 0, false
		}
		off += n
		return v, true
	}
	part, ok := uv()
	if !ok || part > 1<<31 || off+8 > len(p) {
		return m, bad
	}
	m.Partition = int(part)
	m.Offset = int64(binary.LittleEndian.Uint64(p[off:]))
	off += 8
	l, ok := uv()
	if !ok || l > uint64(len(p)-off) {
		return m, bad
	}
	m.State = p[off : off+int(l)]
	off += int(l)
	if m.DedupGen, ok = uv(); !ok {
		return m, bad
	}
	for i, f := range [...]*int{&m.Agents, &m.Classes, &m.DedupCur, &m.DedupPrev} {
		v, ok := uv()
		if !ok || v > 1<<40 || (i >= 2 && v > maxDedupPieces) {
			return m, bad
		}
		*f = int(v)
	}
	if p[1] >= 2 {
		l, ok := uv()
		if !ok || l > uint64(len(p)-off) {
			return m, bad
		}
		m.Policy = p[off : off+int(l)]
		off += int(l)
	}
	if p[1] >= 3 {
		g, _, err := readString(p[off:])
		if err != nil || g == "" {
			return m, bad
		}
		m.Group = g
	}
	return m, nil
}

// stateScan selects, from the records of one state partition read in log
// order, the state to restore: that of the last marker. See the top of this
// file for why that is the right one.
type stateScan struct {
	terms   map[uint64]*termRecords
	live    map[string]struct{} // every key whose last record is not a tombstone
	marker  *checkpointMarker   // the last marker read
	records int                 // records read
	skipped int                 // records that are not state records (skipped)
	// The groups and topics of every marker read (at most maxBindings).
	bindings map[binding]struct{}
}

// binding is what a checkpoint is bound to: a consumer group ("": none, a
// marker before version 3) and an events topic.
type binding struct{ group, topic string }

const maxBindings = 16

// termRecords are the records of one term.
type termRecords struct {
	done    map[string]stateEntry // the term's state as of its last marker
	pending map[string]stateEntry // written after it: a checkpoint in progress
	marked  bool                  // a marker was read; seq is the last one's
	seq     uint64
}

type stateEntry struct {
	offset  int64
	seq     uint64
	payload []byte
}

func newStateScan() *stateScan {
	return &stateScan{terms: make(map[uint64]*termRecords), live: make(map[string]struct{}), bindings: make(map[binding]struct{})}
}

// add takes the next record of the partition; value nil is a tombstone. The
// scan keeps value.
func (s *stateScan) add(offset int64, key, value []byte) {
	s.records++
	if value == nil {
		for _, t := range s.terms {
			delete(t.done, string(key))
			delete(t.pending, string(key))
		}
		delete(s.live, string(key))
		return
	}
	s.live[string(key)] = struct{}{}
	term, seq, payload, err := parseEnvelope(value)
	if err != nil {
		s.skipped++
		return
	}
	t := s.terms[term]
	if t == nil {
		t = &termRecords{done: make(map[string]stateEntry), pending: make(map[string]stateEntry)}
		s.terms[term] = t
	}
	if payload[0] != markerMagic {
		t.pending[string(key)] = stateEntry{offset: offset, seq: seq, payload: payload}
		return
	}
	m, err := parseMarker(term, seq, payload)
	if err != nil || string(key) != markerKey {
		s.skipped++
		return
	}
	if len(s.bindings) < maxBindings {
		s.bindings[binding{m.Group, m.Topic}] = struct{}{}
	}
	if t.marked && seq <= t.seq {
		return // a marker written again, or late: the term has moved on
	}
	t.marked, t.seq = true, seq
	// Records of earlier checkpoints may precede this marker without their
	// own (compaction keeps only the last marker), and a failed attempt's
	// records are followed by its retry's, which rewrites them all.
	for k, e := range t.pending {
		if e.seq <= seq {
			t.done[k] = e
			delete(t.pending, k)
		}
	}
	// Records of other terms can never be part of a later marker's state
	// (a term that comes back is a zombie's, and its state is then
	// incomplete anyway): forget them.
	for other := range s.terms {
		if other != term {
			delete(s.terms, other)
		}
	}
	s.marker = &m
}

// restoredState is the state a stateScan selected.
type restoredState struct {
	marker    checkpointMarker
	classes   [][]byte // peer-group snapshots
	agents    [][]byte // agent snapshots, in log order
	dedupCur  [][]byte // pieces of the duplicate filter's generations
	dedupPrev [][]byte
	problems  []string // how the state falls short of what the marker says
	stale     []string // keys in the partition that are not part of the state
}

// result returns the state of the last marker, or nil when there is none.
func (s *stateScan) result() *restoredState {
	if s.marker == nil {
		return nil
	}
	m := *s.marker
	rs := &restoredState{marker: m}
	done := s.terms[m.Term].done
	used := map[string]bool{markerKey: true}
	entries := make([]stateEntry, 0, len(done))
	keys := make(map[int64]string, len(done))
	cur, prev := make([][]byte, m.DedupCur), make([][]byte, m.DedupPrev)
	for k, e := range done {
		switch e.payload[0] {
		case agentMagic, classMagic:
			entries = append(entries, e)
			keys[e.offset] = k
		case dedupMagic:
			gen, n, hashes, ok := parseDedupPiece(e.payload)
			switch {
			case ok && gen == m.DedupGen && n < len(cur):
				cur[n] = hashes
			case ok && gen+1 == m.DedupGen && n < len(prev):
				prev[n] = hashes
			default:
				continue
			}
			used[k] = true
		}
	}
	slices.SortFunc(entries, func(a, b stateEntry) int { return int(a.offset - b.offset) })
	for _, e := range entries {
		used[keys[e.offset]] = true
		if e.payload[0] == agentMagic {
			rs.agents = append(rs.agents, e.payload)
		} else {
			rs.classes = append(rs.classes, e.payload)
		}
	}
	if len(rs.agents) != m.Agents {
		rs.problems = append(rs.problems, fmt.Sprintf("%d of %d agents", len(rs.agents), m.Agents))
	}
	if len(rs.classes) != m.Classes {
		rs.problems = append(rs.problems, fmt.Sprintf("%d of %d peer groups", len(rs.classes), m.Classes))
	}
	missing := 0
	for _, g := range [2][][]byte{cur, prev} {
		for _, p := range g {
			if p == nil {
				missing++
			}
		}
	}
	if missing > 0 {
		rs.problems = append(rs.problems, fmt.Sprintf("%d of %d pieces of the duplicate filter", m.DedupCur+m.DedupPrev-missing, m.DedupCur+m.DedupPrev))
	}
	rs.dedupCur, rs.dedupPrev = cur, prev
	for k := range s.live {
		if !used[k] {
			rs.stale = append(rs.stale, k)
		}
	}
	slices.Sort(rs.stale)
	return rs
}

// stateStore reads and writes the state topic. It is safe for concurrent use
// by the partition workers.
type stateStore struct {
	topic  string
	events string
	cl     *kafka.Client
	parts  int // partitions of the state topic (checked by prepare)
}

// stateRequestTimeout bounds one request to the state topic.
const stateRequestTimeout = 30 * time.Second

// errStatePermanent marks state-topic errors that retrying cannot fix.
var errStatePermanent = errors.New("permanent state topic error")

// kafkaPermanent reports whether err is a broker's refusal that retrying
// cannot change (authorization, a record too large, a bad request).
func kafkaPermanent(err error) bool {
	for _, code := range []kafka.Error{kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.TopicAuthorizationFailed,
		kafka.ClusterAuthorizationFailed, kafka.InvalidRecord, kafka.InvalidTopic, kafka.SASLAuthenticationFailed} {
		if errors.Is(err, code) {
			return true
		}
	}
	return false
}

// prepare checks that the state topic has as many partitions as the events
// topic, and creates it (compacted, with the broker's default replication)
// when it does not exist. While the events topic does not exist it waits,
// logging, until ctx ends.
func (s *stateStore) prepare(ctx context.Context, log *slog.Logger, retry time.Duration) error {
	for created := false; ; {
		rctx, cancel := context.WithTimeout(ctx, stateRequestTimeout)
		md, err := s.cl.Metadata(rctx, &kafka.MetadataRequest{Topics: []string{s.events, s.topic}})
		cancel()
		var events, state *kafka.Topic
		if err == nil {
			for i := range md.Topics {
				t := &md.Topics[i]
				if t.Error != nil {
					continue
				}
				switch t.Name {
				case s.events:
					events = t
				case s.topic:
					state = t
				}
			}
		}
		switch {
		case err != nil || events == nil:
			if err == nil {
				err = errors.New("no such topic")
			}
			log.Warn("kafka: events topic not available yet, retrying", "topic", s.events, "err", err)
			if !sleep(ctx, retry) {
				return ctx.Err()
			}
			continue
		case state == nil && !created:
			if err := s.create(ctx, len(events.Partitions)); err != nil {
				return err
			}
			log.Info("created the state topic (compacted)", "topic", s.topic, "partitions", len(events.Partitions))
			created = true
			continue
		case state == nil:
			if !sleep(ctx, retry) {
				return ctx.Err()
			}
			continue
		case len(state.Partitions) != len(events.Partitions):
			return fmt.Errorf("kafka.state_topic: %s has %d partitions and the events topic %s has %d: partition P of the events is checkpointed to partition P of the state topic, so they must match (recreate %s with %d partitions, or point kafka.state_topic at a new topic)",
				s.topic, len(state.Partitions), s.events, len(events.Partitions), s.topic, len(events.Partitions))
		}
		s.parts = len(state.Partitions)
		s.checkCompacted(ctx, log)
		return nil
	}
}

func (s *stateStore) create(ctx context.Context, parts int) error {
	rctx, cancel := context.WithTimeout(ctx, stateRequestTimeout)
	defer cancel()
	resp, err := s.cl.CreateTopics(rctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: s.topic, NumPartitions: parts, ReplicationFactor: -1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}},
	}}})
	if err == nil {
		err = resp.Errors[s.topic]
	}
	if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return fmt.Errorf("kafka.state_topic: %s does not exist and creating it failed (create it with %d partitions and cleanup.policy=compact): %w", s.topic, parts, err)
	}
	return nil
}

// checkCompacted warns when the state topic is not compacted: it would then
// grow without bound, or lose state to retention.
func (s *stateStore) checkCompacted(ctx context.Context, log *slog.Logger) {
	rctx, cancel := context.WithTimeout(ctx, stateRequestTimeout)
	defer cancel()
	resp, err := s.cl.DescribeConfigs(rctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: s.topic, ConfigNames: []string{"cleanup.policy"},
	}}})
	if err != nil || len(resp.Resources) == 0 || resp.Resources[0].Error != nil {
		log.Debug("kafka: could not read the state topic's cleanup.policy", "topic", s.topic, "err", err)
		return
	}
	for _, e := range resp.Resources[0].ConfigEntries {
		if e.ConfigName == "cleanup.policy" && !strings.Contains(e.ConfigValue, "compact") {
			log.Warn("the state topic is not compacted: it grows with every checkpoint, and retention may delete state; set cleanup.policy=compact",
				"topic", s.topic, "cleanup.policy", e.ConfigValue)
		}
	}
}

// read feeds partition part of the state topic, from its start to its end
// as of now, to scan. It returns the bytes read.
func (s *stateStore) read(ctx context.Context, part int, scan *stateScan) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, stateRequestTimeout)
	lo, err := s.cl.ListOffsets(rctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		s.topic: {kafka.FirstOffsetOf(part), kafka.LastOffsetOf(part)},
	}})
	cancel()
	if err != nil {
		return 0, fmt.Errorf("state topic %s: partition %d: list offsets: %w", s.topic, part, err)
	}
	first, end := int64(-1), int64(-1)
	for _, p := range lo.Topics[s.topic] {
		if p.Partition != part {
			continue
		}
		if p.Error != nil {
			return 0, fmt.Errorf("state topic %s: partition %d: list offsets: %w", s.topic, part, p.Error)
		}
		first, end = p.FirstOffset, p.LastOffset
	}
	if first < 0 || end < 0 {
		return 0, fmt.Errorf("state topic %s: partition %d: no offsets", s.topic, part)
	}
	var n int64
	for off := first; off < end; {
		rctx, cancel := context.WithTimeout(ctx, stateRequestTimeout)
		res, err := s.cl.Fetch(rctx, &kafka.FetchRequest{Topic: s.topic, Partition: part, Offset: off, MinBytes: 1, MaxBytes: 32 << 20, MaxWait: 100 * time.Millisecond})
		if err == nil {
			err = res.Error
		}
		if err != nil {
			cancel()
			return n, fmt.Errorf("state topic %s: partition %d: fetch at %d: %w", s.topic, part, off, err)
		}
		got := 0
		for {
			rec, err := res.Records.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				cancel()
				return n, fmt.Errorf("state topic %s: partition %d: read at %d: %w", s.topic, part, off, err)
			}
			key, kerr := kafka.ReadAll(rec.Key)
			value, verr := kafka.ReadAll(rec.Value)
			if kerr != nil || verr != nil {
				cancel()
				return n, fmt.Errorf("state topic %s: partition %d: read at %d: %w", s.topic, part, rec.Offset, errors.Join(kerr, verr))
			}
			if rec.Offset < off || rec.Offset >= end {
				continue // a batch starts before the offset asked for, or a record written since the scan began
			}
			scan.add(rec.Offset, key, value)
			n += int64(len(key) + len(value))
			off = rec.Offset + 1
			got++
		}
		cancel()
		if got == 0 {
			break // nothing left below end (the rest was compacted away)
		}
	}
	return n, nil
}

// stateWriter produces one checkpoint to one partition of the state topic:
// records accumulate into batches of at most maxStateBatch bytes (or one
// larger record), each produced (acks=all) before the next one starts.
type stateWriter struct {
	s       *stateStore
	ctx     context.Context
	part    int
	buf     []byte
	recs    []kafka.Record
	size    int
	records int
	bytes   int64
	now     time.Time
}

const maxStateBatch = 768 << 10

// add queues one record; value nil is a tombstone. key and value are copied.
func (w *stateWriter) add(key, value []byte) error {
	if w.size > 0 && w.size+len(key)+len(value)+64 > maxStateBatch {
		if err := w.flush(); err != nil {
			return err
		}
	}
	w.buf = append(w.buf, key...)
	k := w.buf[len(w.buf)-len(key):]
	var v []byte
	if value != nil {
		w.buf = append(w.buf, value...)
		v = w.buf[len(w.buf)-len(value):]
	}
	w.recs = append(w.recs, kafka.Record{Key: kafka.NewBytes(k), Value: kafka.NewBytes(v), Time: w.now})
	w.size += len(key) + len(value) + 64
	w.records++
	w.bytes += int64(len(key) + len(value))
	return nil
}

// flush produces the queued records.
//
// A produce request is never cancelled, only given a deadline: kafka-go
// hands requests to a connection goroutine, and one whose caller stopped
// waiting on a cancelled context is still sent, later — records of an
// abandoned attempt could then land after a later checkpoint. A deadline is
// also set on the connection, so a request not written by then never is. For
// the same reason the buffer of a failed request is never reused: the
// connection goroutine may still be reading it.
func (w *stateWriter) flush() error {
	if len(w.recs) == 0 {
		return nil
	}
	if err := w.ctx.Err(); err != nil { // stopping: abandon between requests
		w.buf = nil
		return err
	}
	deadline := time.Now().Add(stateRequestTimeout)
	if d, ok := w.ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(context.WithoutCancel(w.ctx), deadline)
	defer cancel()
	resp, err := w.s.cl.Produce(ctx, &kafka.ProduceRequest{
		Topic: w.s.topic, Partition: w.part, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(w.recs...),
	})
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	if err != nil {
		w.buf = nil
		if errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) {
			err = fmt.Errorf("%w (an agent's or peer group's snapshot is larger than the broker accepts: lower detector.agent_seen_slots or detector.peer_seen_slots, or raise max.message.bytes on the state topic)", err)
		}
		if kafkaPermanent(err) {
			err = errors.Join(err, errStatePermanent)
		}
		return fmt.Errorf("state topic %s: partition %d: produce %d records: %w", w.s.topic, w.part, len(w.recs), err)
	}
	clear(w.recs)
	w.recs, w.buf, w.size = w.recs[:0], w.buf[:0], 0
	return nil
}

// checkpoint writes ps's state to the state topic: what changed since the
// last checkpoint (everything in the first of a term), then the marker, for
// offset ps.next. It does not commit. On error ps.ck keeps what it needs to
// write everything again at the next attempt.
func (r *Runtime) checkpoint(ctx context.Context, ps *partState) error {
	ck := &ps.ck
	if ck.dedupKeys == nil {
		ck.dedupKeys = make(map[uint64]int)
	}
	var changed bool
	ck.agents, ck.classes, changed = ps.p.TakeChanges(ck.agents, ck.classes)
	ck.changed = ck.changed || changed
	gen, addedCur, addedPrev := ps.p.TakeDedupChanges()
	full := ck.full
	if full {
		ck.agents = ps.p.AgentIDs(ck.agents[:0])
		ck.classes = ps.p.ClassNames(ck.classes[:0])
	} else {
		slices.Sort(ck.agents)
		ck.agents = slices.Compact(ck.agents)
		slices.Sort(ck.classes)
		ck.classes = slices.Compact(ck.classes)
	}
	// Until this checkpoint completes, the journal's ids are only in it: if
	// it fails, the next attempt writes the filter whole.
	dedupWhole := full || ck.dedupWhole
	ck.dedupWhole = true
	seq := ck.seq + 1
	w := &stateWriter{s: r.state, ctx: ctx, part: ps.id, buf: ck.buf[:0], now: r.now()}
	defer func() {
		// Keep a modest buffer for the next checkpoint, not a full one,
		// and never one a failed request may still be reading (flush).
		ck.buf = nil
		if w.buf != nil && cap(w.buf) <= 2*maxStateBatch {
			ck.buf = w.buf[:0]
		}
	}()
	var key, val []byte
	if full { // keys the restore found but did not use
		for _, k := range ck.stale {
			if err := w.add([]byte(k), nil); err != nil {
				return err
			}
		}
	}
	for _, name := range ck.classes {
		val = appendEnvelope(val[:0], ck.term, seq)
		var ok bool
		if val, ok = ps.p.AppendClassState(val, name); !ok {
			continue
		}
		key = append(append(key[:0], classKeyPrefix...), name...)
		if err := w.add(key, val); err != nil {
			return err
		}
	}
	for _, id := range ck.agents {
		val = appendEnvelope(val[:0], ck.term, seq)
		var ok bool
		if val, ok = ps.p.AppendAgentState(val, id); !ok {
			continue
		}
		if err := w.add(appendAgentKey(key[:0], id), val); err != nil {
			return err
		}
	}

	// The duplicate filter: pieces of generations gen and gen-1, numbered
	// on from those already written unless it is written whole.
	pieces := map[uint64]int{}
	if !dedupWhole {
		pieces[ck.dedupGen] = ck.dedupCur
		if ck.dedupGen > 0 {
			pieces[ck.dedupGen-1] = ck.dedupPrev
		}
	}
	var hashes []byte
	writeGen := func(g uint64, b []byte) error {
		for len(b) > 0 {
			n := min(len(b), 8*dedupPiece)
			val = appendDedupPiece(appendEnvelope(val[:0], ck.term, seq), g, pieces[g], b[:n])
			if err := w.add(appendDedupKey(key[:0], g, pieces[g]), val); err != nil {
				return err
			}
			pieces[g]++
			ck.dedupKeys[g] = max(ck.dedupKeys[g], pieces[g])
			b = b[n:]
		}
		return nil
	}
	for i, g := range [2]uint64{gen, gen - 1} {
		if i == 1 && gen == 0 {
			break
		}
		if dedupWhole {
			hashes = ps.p.AppendDedupGeneration(hashes[:0], i == 1)
		} else {
			hashes = features.AppendHashes(hashes[:0], [2][]uint64{addedCur, addedPrev}[i])
		}
		if err := writeGen(g, hashes); err != nil {
			return err
		}
	}
	for g, n := range ck.dedupKeys { // generations gone, and pieces no longer used
		from := 0
		if g == gen || (gen > 0 && g == gen-1) {
			from = pieces[g]
		}
		for k := from; k < n; k++ {
			if err := w.add(appendDedupKey(key[:0], g, k), nil); err != nil {
				return err
			}
		}
	}

	m := checkpointMarker{
		Term: ck.term, Seq: seq, Topic: r.cfg.Topic, Partition: ps.id, Offset: ps.next, Group: r.cfg.Group,
		State:  ps.p.AppendPartitionState(nil),
		Policy: ps.rv.AppendBinary(nil),
		Agents: ps.p.NumAgents(), Classes: len(ps.p.classes),
		DedupGen: gen, DedupCur: pieces[gen],
	}
	if gen > 0 {
		m.DedupPrev = pieces[gen-1]
	}
	val = m.appendPayload(appendEnvelope(val[:0], ck.term, seq))
	if err := w.add([]byte(markerKey), val); err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	ck.seq, ck.offset, ck.full, ck.dedupWhole = seq, ps.next, false, false
	ck.dedupGen, ck.dedupCur, ck.dedupPrev = m.DedupGen, m.DedupCur, m.DedupPrev
	for g := range ck.dedupKeys {
		if _, ok := pieces[g]; !ok || (g != gen && (gen == 0 || g != gen-1)) {
			delete(ck.dedupKeys, g)
		} else {
			ck.dedupKeys[g] = pieces[g]
		}
	}
	ck.agents, ck.classes, ck.changed, ck.stale = ck.agents[:0], ck.classes[:0], false, nil
	r.m.ckRecords.Add(float64(w.records))
	r.m.ckBytes.Add(float64(w.bytes))
	return nil
}

// restore loads partition ps.id's last checkpoint into ps (a new partState)
// and returns the offset to consume from: the checkpoint's, or committed
// when it is ahead or there is no checkpoint. Errors wrapping
// errStatePermanent are not worth retrying.
func (r *Runtime) restore(ctx context.Context, ps *partState, committed int64, log *slog.Logger) (int64, error) {
	start := time.Now()
	scan := newStateScan()
	n, err := r.state.read(ctx, ps.id, scan)
	if err != nil {
		return 0, err
	}
	if scan.skipped > 0 {
		log.Warn("state topic: records that are not vigil state were skipped", "topic", r.cfg.StateTopic, "skipped", scan.skipped)
	}
	rs := scan.result()
	if rs == nil {
		log.Info("no checkpoint: the partition's agents start cold", "committed", committed, "state_records", scan.records)
		for k := range scan.live {
			ps.ck.stale = append(ps.ck.stale, k)
		}
		return committed, nil
	}
	m := rs.marker
	if err := r.foreign(&m, ps.id, committed); err != nil {
		return 0, err
	}
	for b := range scan.bindings {
		if b.group != "" && b != (binding{r.cfg.Group, r.cfg.Topic}) {
			log.Warn("state topic: another consumer group or topic also wrote checkpoints to this partition; the last one is this group's and is restored, but a state topic shared by groups loses state: give each group a state topic of its own (kafka.state_topic)",
				"topic", r.cfg.StateTopic, "group", r.cfg.Group, "other_group", b.group, "other_topic", b.topic)
		}
	}
	if len(rs.problems) > 0 {
		r.m.restoreIncomplete.Inc()
		log.Error("state checkpoint incomplete (compaction removed records of a checkpoint that never completed): the missing agents start cold",
			"offset", m.Offset, "found", strings.Join(rs.problems, ", "))
	}
	p := ps.p
	if err := ps.rv.DecodeFrom(m.Policy); err != nil {
		// Not worth stopping for: the policy forgets recent alerts and
		// spent budget, as it did before version 2.
		r.m.restoreIncomplete.Inc()
		log.Error("state topic: revocation policy state not restored: recent alerts and spent budget are forgotten", "err", err)
	}
	if err := p.RestorePartitionState(m.State); err != nil {
		return 0, fmt.Errorf("state topic %s: partition %d: %w (restore the configuration the state was built with, or start from an empty state topic: every agent then starts cold): %w",
			r.cfg.StateTopic, ps.id, err, errStatePermanent)
	}
	if err := p.RestoreDedup(slices.DeleteFunc(rs.dedupCur, isNil), slices.DeleteFunc(rs.dedupPrev, isNil)); err != nil {
		r.m.restoreIncomplete.Inc()
		log.Error("state topic: duplicate filter not restored: redeliveries of recent events may be counted again", "err", err)
	}
	bad := 0
	for _, c := range rs.classes {
		if err := p.RestoreClass(c); err != nil {
			bad++
			log.Error("state topic: peer group not restored", "err", err)
		}
	}
	for _, a := range rs.agents {
		if err := p.RestoreAgent(a); err != nil {
			bad++
			if bad < 10 {
				log.Error("state topic: agent not restored: it starts cold", "err", err)
			}
		}
	}
	if bad > 0 {
		r.m.restoreIncomplete.Inc()
	}
	// What restoring may have changed is in the checkpoint already; the
	// new term's first checkpoint writes everything anyway.
	p.TakeChanges(nil, nil)
	p.TakeDedupChanges()
	ps.ck.offset, ps.ck.stale = m.Offset, rs.stale
	ps.ck.dedupKeys = map[uint64]int{m.DedupGen: m.DedupCur}
	if m.DedupGen > 0 {
		ps.ck.dedupKeys[m.DedupGen-1] = m.DedupPrev
	}
	from, why := resumeAt(committed, m.Offset, m.Group != "")
	lvl := slog.LevelInfo
	if from != m.Offset {
		lvl = slog.LevelWarn
	}
	d := time.Since(start)
	r.m.restoreSeconds.Observe(d.Seconds())
	log.Log(ctx, lvl, "partition state restored: "+why, "agents", len(rs.agents), "peer_groups", len(rs.classes), "checkpoint", m.Offset,
		"committed", committed, "consume_from", from, "state_records", scan.records, "state_bytes", n, "duration", d.Round(time.Millisecond))
	return from, nil
}

func isNil(b []byte) bool { return b == nil }

// foreign returns an error (wrapping errStatePermanent) when checkpoint m,
// found in state partition part, is not this group's checkpoint of
// partition part of its events topic; committed is the group's committed
// offset for the partition (< 0: none). See the top of this file for why
// another group's checkpoint is refused, not ignored.
func (r *Runtime) foreign(m *checkpointMarker, part int, committed int64) error {
	own := r.cfg.Group + "-state"
	if own == r.cfg.StateTopic {
		own = r.cfg.Group + "-state-2"
	}
	switch {
	case m.Topic != r.cfg.Topic || m.Partition != part:
		return fmt.Errorf("state topic %s: partition %d holds the checkpoints of %s partition %d, not of %s partition %d: a state topic belongs to one events topic and one consumer group (is kafka.state_topic shared with another deployment, or was kafka.repartition switched?); point kafka.state_topic at a topic of its own, e.g. %s (vigil creates it): %w",
			r.cfg.StateTopic, part, m.Topic, m.Partition, r.cfg.Topic, part, own, errStatePermanent)
	case m.Group != "" && m.Group != r.cfg.Group:
		return fmt.Errorf("state topic %s: partition %d holds the checkpoints of consumer group %q, and this is group %q: a state topic belongs to one group, and resuming at another group's checkpoint would skip every event before it; give group %q a state topic of its own: set kafka.state_topic, e.g. to %s (vigil creates it): %w",
			r.cfg.StateTopic, part, m.Group, r.cfg.Group, r.cfg.Group, own, errStatePermanent)
	case m.Group == "" && committed < 0:
		return fmt.Errorf("state topic %s: partition %d holds a checkpoint of an older vigil, which names no consumer group, and group %q has committed no offset for the partition, so the checkpoint may be another group's and resuming at it (offset %d) could skip events; give group %q a state topic of its own: set kafka.state_topic, e.g. to %s (vigil creates it); or, if the checkpoint is this group's, commit offset %d for the partition (kafka-consumer-groups.sh --reset-offsets) and start again: %w",
			r.cfg.StateTopic, part, r.cfg.Group, m.Offset, r.cfg.Group, own, m.Offset, errStatePermanent)
	}
	return nil
}

// resumeAt is where a partition restored from a checkpoint at offset ckpt
// resumes, given its committed offset (< 0: none) and whether the
// checkpoint names its consumer group (bound; an unbound one is the group's
// only if it has committed an offset, see foreign), and why.
func resumeAt(committed, ckpt int64, bound bool) (int64, string) {
	switch {
	case committed > ckpt:
		return committed, "the committed offset is ahead of the checkpoint (offsets moved by hand, or old state): events in between are not in the agents' baselines"
	case committed < 0:
		return ckpt, "no committed offset: resuming at the checkpoint"
	case committed < ckpt && !bound:
		return committed, "the checkpoint, of an older vigil, names no consumer group: resuming at the group's committed offset, behind it, rather than skip events on its word"
	case committed < ckpt:
		return ckpt, "resuming at the checkpoint, ahead of the committed offset: the previous owner stopped between its checkpoint and its commit, after writing every output below the checkpoint"
	}
	return ckpt, "resuming at the checkpoint"
}
