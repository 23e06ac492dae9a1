package clickhouse

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigil-sec/vigil/detector"
)

// The audit chain makes what vigil emitted tamper-evident: each alert and
// revocation request is appended, in the order vigil emitted it, to the
// hash chain of its Kafka topic and partition (one chain per partition:
// only one worker writes a partition at a time, so appends need no
// coordination between instances). An entry's hash covers the previous
// entry's hash, its own position and the record's JSON, byte for byte;
// changing, removing or inserting an entry, or changing a stored alert or
// request, breaks the chain from there on (VerifyChain). Cutting entries
// off the end, or rewriting a chain consistently from some entry on, is
// evident only against a head recorded elsewhere: Heads returns the head
// of each chain the sink wrote, for publication outside ClickHouse, and
// CheckHead checks a chain against one.

const (
	recordAlert      = "alert"
	recordRevocation = "revocation"
)

// genesis is the prev_hash of a chain's first entry.
var genesis = string(bytes.Repeat([]byte{'0'}, 64))

// ErrChainBroken is wrapped by VerifyChain's and CheckHead's errors when a
// chain does not verify: an entry or a stored record was changed, removed,
// inserted or moved, or the chain lacks a head published earlier. Those
// errors are *ChainError.
var ErrChainBroken = errors.New("audit chain broken")

// BreakKind says how a chain is broken.
type BreakKind string

// The kinds of break, as ChainError.Kind.
const (
	// BreakAltered: an entry or a stored record differs from what was
	// chained, or a record was added outside the chain.
	BreakAltered BreakKind = "altered"
	// BreakMissing: an entry, or a chained record's row, is gone.
	BreakMissing BreakKind = "missing"
	// BreakReordered: an intact entry sits at another position than the
	// one it was written at.
	BreakReordered BreakKind = "reordered"
	// BreakLink: an intact entry does not link to the entry before it,
	// which was replaced (rewritten with a consistent hash of its own).
	BreakLink BreakKind = "link"
	// BreakHead: the chain verifies but does not contain a head published
	// earlier: entries were cut off its end, or it was rewritten
	// consistently.
	BreakHead BreakKind = "head"
)

// ChainError says where and how a chain is broken: the first entry (in seq
// order) or stored record that does not verify.
type ChainError struct {
	Topic     string
	Partition int
	Kind      BreakKind
	// Seq is the entry's position (0 when the break is in the alerts or
	// revocations table and names only a record).
	Seq uint64
	// RecordType ("alert", "revocation") and RecordID name the record
	// concerned, when there is one.
	RecordType, RecordID string
	Msg                  string // what is wrong, for people
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("clickhouse: %s partition %d: %v (%s): %s", e.Topic, e.Partition, ErrChainBroken, e.Kind, e.Msg)
}

// Unwrap returns ErrChainBroken.
func (e *ChainError) Unwrap() error { return ErrChainBroken }

// Head is a chain's last entry: what anchors the chain outside ClickHouse.
// Its JSON form is one line of `vigil audit heads` and one message of the
// heads topic.
type Head struct {
	Topic     string    `json:"topic"`
	Partition int       `json:"partition"`
	Seq       uint64    `json:"seq"`
	Hash      string    `json:"hash"`
	At        time.Time `json:"at"` // when the entry was written (its at)
}

// Key identifies the head's chain: topic/partition.
func (h Head) Key() string { return h.Topic + "/" + strconv.Itoa(h.Partition) }

// Heads returns the head of every chain this Sink has appended to, as of
// its last append, ordered by topic and partition. A chain another
// instance appended to since is not reread: its head here is older, and
// still in the chain. Safe for concurrent use.
func (s *Sink) Heads() []Head {
	s.mu.Lock()
	out := make([]Head, 0, len(s.heads))
	for _, h := range s.heads {
		out = append(out, h)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Head) int {
		return cmp.Or(strings.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
	})
	return out
}

func (s *Sink) setHead(h Head) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.heads[chainKey{h.Topic, h.Partition}] = h
}

type chainKey struct {
	topic     string
	partition int
}

// record is an alert or revocation request to append to a chain.
type record struct {
	typ, id string
	body    []byte // the JSON vigil emitted
}

// entryHash is an entry's hash: hex SHA-256 of the fields, each followed by
// a newline. The same is computable in SQL (deploy/clickhouse/queries.sql,
// audit_chain_breaks).
func entryHash(topic string, partition int, seq uint64, at int64, prev, typ, id string, body []byte) string {
	h := sha256.New()
	b := make([]byte, 0, 256)
	b = append(b, "vigil-audit-v1\n"...)
	b = append(append(b, topic...), '\n')
	b = append(strconv.AppendInt(b, int64(partition), 10), '\n')
	b = append(strconv.AppendUint(b, seq, 10), '\n')
	b = append(strconv.AppendInt(b, at, 10), '\n')
	b = append(append(b, prev...), '\n')
	b = append(append(b, typ...), '\n')
	b = append(append(b, id...), '\n')
	h.Write(b)
	h.Write(body)
	h.Write([]byte{'\n'})
	return hex.EncodeToString(h.Sum(nil))
}

func (s *Sink) chainLock(k chainKey) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.chains[k]
	if l == nil {
		l = new(sync.Mutex)
		s.chains[k] = l
	}
	return l
}

// appendRecords writes b's alerts and revocation requests that are not in
// the partition's chain yet (a redelivered batch adds nothing), then
// appends them to the chain. The chain's head is read from ClickHouse on
// every call rather than cached: a partition can move to another instance
// and back, and a cached head would then fork the chain.
func (s *Sink) appendRecords(ctx context.Context, b *detector.Batch) error {
	k := chainKey{b.Topic, b.Partition}
	l := s.chainLock(k)
	l.Lock()
	defer l.Unlock()

	recs := make([]record, 0, len(b.Alerts)+len(b.Revocations))
	ids := make([]string, 0, cap(recs))
	for _, a := range b.Alerts {
		body, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("clickhouse: encode alert %s: %w (%w)", a.AlertID, err, detector.ErrPermanent)
		}
		recs = append(recs, record{recordAlert, a.AlertID, body})
		ids = append(ids, a.AlertID)
	}
	for _, r := range b.Revocations {
		body := r.Body
		if len(body) == 0 {
			var err error
			if body, err = json.Marshal(r); err != nil {
				return fmt.Errorf("clickhouse: encode revocation %s: %w (%w)", r.RequestID, err, detector.ErrPermanent)
			}
		}
		recs = append(recs, record{recordRevocation, r.RequestID, body})
		ids = append(ids, r.RequestID)
	}

	seq, prev, err := s.chainHead(ctx, k)
	if err != nil {
		return classify("read audit chain head", err)
	}
	seen, err := s.chained(ctx, k, ids)
	if err != nil {
		return classify("read audit chain", err)
	}
	var (
		alerts    []*detector.Alert
		alertRecs []record
		revs      []*detector.Revocation
		revRecs   []record
		fresh     []record
	)
	for i, r := range recs {
		key := r.typ + "\x00" + r.id
		if seen[key] {
			continue
		}
		seen[key] = true
		fresh = append(fresh, r)
		if i < len(b.Alerts) {
			alerts, alertRecs = append(alerts, b.Alerts[i]), append(alertRecs, r)
		} else {
			revs, revRecs = append(revs, b.Revocations[i-len(b.Alerts)]), append(revRecs, r)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	if len(alerts) > 0 {
		if err := s.insertAlerts(ctx, k.topic, k.partition, alerts, alertRecs); err != nil {
			return classify("insert alerts", err)
		}
	}
	if len(revs) > 0 {
		if err := s.insertRevocations(ctx, k.topic, k.partition, revs, revRecs); err != nil {
			return classify("insert revocations", err)
		}
	}
	batch, err := s.conn.PrepareBatch(ctx,
		"INSERT INTO audit (topic, kafka_partition, seq, record_type, record_id, at, prev_hash, hash, record)")
	if err != nil {
		return classify("append to audit chain", err)
	}
	defer batch.Close()
	at := time.Now().UTC().Truncate(time.Second)
	for _, r := range fresh {
		seq++
		h := entryHash(k.topic, k.partition, seq, at.Unix(), prev, r.typ, r.id, r.body)
		if err := batch.Append(k.topic, uint32(k.partition), seq, r.typ, r.id, at, prev, h, string(r.body)); err != nil {
			return classify("append to audit chain", err)
		}
		prev = h
	}
	if err := batch.Send(); err != nil {
		return classify("append to audit chain", err)
	}
	s.setHead(Head{Topic: k.topic, Partition: k.partition, Seq: seq, Hash: prev, At: at})
	s.log.Debug("clickhouse: audit chain head", "topic", k.topic, "partition", k.partition, "seq", seq, "hash", prev)
	return nil
}

// chainHead returns the last entry's seq and hash, or 0 and genesis.
func (s *Sink) chainHead(ctx context.Context, k chainKey) (uint64, string, error) {
	rows, err := s.conn.Query(ctx,
		"SELECT seq, hash FROM audit WHERE topic = ? AND kafka_partition = ? ORDER BY seq DESC LIMIT 1",
		k.topic, uint32(k.partition))
	if err != nil {
		return 0, "", err
	}
	defer rows.Close()
	seq, hash := uint64(0), genesis
	if rows.Next() {
		if err := rows.Scan(&seq, &hash); err != nil {
			return 0, "", err
		}
	}
	return seq, hash, rows.Err()
}

// chained returns which of ids the chain already holds, as type\0id keys.
func (s *Sink) chained(ctx context.Context, k chainKey, ids []string) (map[string]bool, error) {
	rows, err := s.conn.Query(ctx,
		"SELECT toString(record_type), record_id FROM audit WHERE topic = ? AND kafka_partition = ? AND has(?, record_id)",
		k.topic, uint32(k.partition), ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	seen := make(map[string]bool)
	for rows.Next() {
		var typ, id string
		if err := rows.Scan(&typ, &id); err != nil {
			return nil, err
		}
		seen[typ+"\x00"+id] = true
	}
	return seen, rows.Err()
}

// VerifyChain checks the audit chain of topic's partition and returns how
// many entries it holds. The chain verifies when its entries are numbered
// 1, 2, … without gaps or repeats, each links to the one before and has
// the hash of its content, and the alerts and revocations tables hold
// exactly the chain's records of that partition, unchanged (JSON byte for
// byte, and the columns analysts filter on agree with it). Otherwise the
// error is a *ChainError (wrapping ErrChainBroken) naming the first entry
// or record that does not verify and how (ChainError.Kind). It reads the
// whole chain, and on a break the chain's links once more to tell a moved
// entry from a changed one; safe for concurrent use.
func (s *Sink) VerifyChain(ctx context.Context, topic string, partition int) (int, error) {
	broken := func(kind BreakKind, seq uint64, typ, id, format string, args ...any) error {
		return &ChainError{Topic: topic, Partition: partition, Kind: kind, Seq: seq, RecordType: typ, RecordID: id, Msg: fmt.Sprintf(format, args...)}
	}
	rows, err := s.conn.Query(ctx,
		`SELECT seq, toString(record_type), record_id, at, prev_hash, hash, record
		 FROM audit WHERE topic = ? AND kafka_partition = ? ORDER BY seq, hash`,
		topic, uint32(partition))
	if err != nil {
		return 0, classify("read audit chain", err)
	}
	defer rows.Close()
	digests := make(map[string][sha256.Size]byte)
	n, prev := uint64(0), genesis
	for rows.Next() {
		var (
			seq                     uint64
			typ, id, prevHash, hash string
			at                      time.Time
			body                    string
		)
		if err := rows.Scan(&seq, &typ, &id, &at, &prevHash, &hash, &body); err != nil {
			return 0, classify("read audit chain", err)
		}
		switch {
		case seq == n:
			return 0, broken(BreakAltered, seq, typ, id, "entry %d appears twice (%s %s was inserted)", seq, typ, id)
		case seq == n+2:
			return 0, broken(BreakMissing, n+1, "", "", "entry %d is missing", n+1)
		case seq != n+1:
			return 0, broken(BreakMissing, n+1, "", "", "entries %d to %d are missing", n+1, seq-1)
		}
		if ok := hash == entryHash(topic, partition, seq, at.Unix(), prevHash, typ, id, []byte(body)); !ok || prevHash != prev {
			rows.Close()
			e := entry{seq, typ, id, at.Unix(), prevHash, hash, []byte(body)}
			return 0, s.diagnose(ctx, topic, partition, e, ok, broken)
		}
		key := typ + "\x00" + id
		if _, dup := digests[key]; dup {
			return 0, broken(BreakAltered, seq, typ, id, "entry %d repeats %s %s", seq, typ, id)
		}
		digests[key] = sha256.Sum256([]byte(body))
		n, prev = seq, hash
	}
	if err := rows.Err(); err != nil {
		return 0, classify("read audit chain", err)
	}
	rows.Close()
	if err := s.verifyRecords(ctx, topic, partition, digests, broken); err != nil {
		return 0, err
	}
	return int(n), nil
}

// entry is one row of the audit table.
type entry struct {
	seq        uint64
	typ, id    string
	at         int64
	prev, hash string
	body       []byte
}

// diagnose says how the chain is broken at e, the first entry that does
// not match its hash (consistent false) or does not link to the entry
// before it. It follows the chain's links back from e to find the position
// e was written at: an entry that hashes correctly there was moved
// (reordered); one whose predecessor is no longer in the chain follows a
// removed entry (missing); otherwise it was changed (altered) or, when it
// hashes correctly where it is, the entry before it was replaced (link).
func (s *Sink) diagnose(ctx context.Context, topic string, partition int, e entry, consistent bool,
	broken func(BreakKind, uint64, string, string, string, ...any) error) error {
	if consistent {
		return broken(BreakLink, e.seq, e.typ, e.id,
			"entry %d (%s %s) does not link to entry %d: entry %d was replaced, or the chain rewritten up to it", e.seq, e.typ, e.id, e.seq-1, e.seq-1)
	}
	links := make(map[string]string) // hash → prev_hash
	rows, err := s.conn.Query(ctx, "SELECT hash, prev_hash FROM audit WHERE topic = ? AND kafka_partition = ?", topic, uint32(partition))
	if err != nil {
		return classify("read audit chain", err)
	}
	defer rows.Close()
	for rows.Next() {
		var h, p string
		if err := rows.Scan(&h, &p); err != nil {
			return classify("read audit chain", err)
		}
		links[h] = p
	}
	if err := rows.Err(); err != nil {
		return classify("read audit chain", err)
	}
	// The position of the entry with hash h when it was written: the
	// number of links from it back to genesis.
	position := func(h string) (uint64, bool) {
		var n uint64
		for h != genesis {
			p, ok := links[h]
			if !ok || n > uint64(len(links)) {
				return 0, false // a link to an entry not in the chain, or a loop
			}
			n, h = n+1, p
		}
		return n, true
	}
	before, ok := position(e.prev)
	switch {
	case !ok:
		return broken(BreakMissing, e.seq, e.typ, e.id,
			"entry %d (%s %s) follows an entry that is no longer in the chain: entries before it were removed (the rest renumbered), or its prev_hash was changed", e.seq, e.typ, e.id)
	case before+1 != e.seq && e.hash == entryHash(topic, partition, before+1, e.at, e.prev, e.typ, e.id, e.body):
		return broken(BreakReordered, e.seq, e.typ, e.id, "entry %d (%s %s) was written as entry %d: entries were reordered", e.seq, e.typ, e.id, before+1)
	}
	return broken(BreakAltered, e.seq, e.typ, e.id, "entry %d (%s %s) does not match its hash", e.seq, e.typ, e.id)
}

// Chains lists the chains in the database, as topic and partition in
// Head, with Seq and Hash zero: every topic and partition that has audit
// entries, alerts or revocation requests. Ordered by topic, partition.
func (s *Sink) Chains(ctx context.Context) ([]Head, error) {
	rows, err := s.conn.Query(ctx, `SELECT topic, kafka_partition FROM (
		SELECT DISTINCT topic, kafka_partition FROM audit
		UNION ALL SELECT DISTINCT topic, kafka_partition FROM alerts
		UNION ALL SELECT DISTINCT topic, kafka_partition FROM revocations)
		GROUP BY topic, kafka_partition ORDER BY topic, kafka_partition`)
	if err != nil {
		return nil, classify("list audit chains", err)
	}
	defer rows.Close()
	var out []Head
	for rows.Next() {
		var (
			t string
			p uint32
		)
		if err := rows.Scan(&t, &p); err != nil {
			return nil, classify("list audit chains", err)
		}
		out = append(out, Head{Topic: t, Partition: int(p)})
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list audit chains", err)
	}
	return out, nil
}

// CheckHead checks that h's chain holds h: an entry at h.Seq with hash
// h.Hash. Check the chain itself with VerifyChain first: CheckHead reads
// only that entry. Otherwise the error is a *ChainError of kind BreakHead:
// the chain ends before h.Seq (entries were cut off its end), or its entry
// there has another hash (the chain was rewritten). Safe for concurrent
// use.
func (s *Sink) CheckHead(ctx context.Context, h Head) error {
	var (
		last uint64
		hash string
	)
	err := s.conn.QueryRow(ctx, "SELECT max(seq), anyIf(hash, seq = ?) FROM audit WHERE topic = ? AND kafka_partition = ?",
		h.Seq, h.Topic, uint32(h.Partition)).Scan(&last, &hash)
	if err != nil {
		return classify("read audit chain", err)
	}
	broken := func(format string, args ...any) error {
		return &ChainError{Topic: h.Topic, Partition: h.Partition, Kind: BreakHead, Seq: h.Seq, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case last == 0:
		return broken("the chain has no entries, but a head at entry %d was published at %s (hash %s): the chain was removed",
			h.Seq, h.At.UTC().Format(time.RFC3339), h.Hash)
	case last < h.Seq:
		return broken("the chain ends at entry %d, before entry %d, the head published at %s (hash %s): entries were removed from its end",
			last, h.Seq, h.At.UTC().Format(time.RFC3339), h.Hash)
	case hash != h.Hash:
		return broken("entry %d has hash %s, the head published at %s has %s: the chain was rewritten",
			h.Seq, hash, h.At.UTC().Format(time.RFC3339), h.Hash)
	}
	return nil
}

// verifyRecords checks the alerts and revocations of a partition against
// the chain's record digests, which it consumes.
func (s *Sink) verifyRecords(ctx context.Context, topic string, partition int, digests map[string][sha256.Size]byte,
	broken func(BreakKind, uint64, string, string, string, ...any) error) error {
	match := func(typ, id, body string, agree bool) error {
		key := typ + "\x00" + id
		d, ok := digests[key]
		switch {
		case !ok:
			return broken(BreakAltered, 0, typ, id, "%s %s is not in the chain (inserted, or left by a Write that failed before its chain entries)", typ, id)
		case d != sha256.Sum256([]byte(body)):
			return broken(BreakAltered, 0, typ, id, "%s %s differs from its chain entry", typ, id)
		case !agree:
			return broken(BreakAltered, 0, typ, id, "%s %s: its columns disagree with its JSON", typ, id)
		}
		delete(digests, key)
		return nil
	}

	rows, err := s.conn.Query(ctx,
		`SELECT alert_id, json, agent_id, window_start, score, toString(severity), kind
		 FROM alerts FINAL WHERE topic = ? AND kafka_partition = ?`, topic, uint32(partition))
	if err != nil {
		return classify("read alerts", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, body, agent, sev, kind string
			start                      time.Time
			score                      float64
			a                          detector.Alert
		)
		if err := rows.Scan(&id, &body, &agent, &start, &score, &sev, &kind); err != nil {
			return classify("read alerts", err)
		}
		agree := json.Unmarshal([]byte(body), &a) == nil && a.AgentID == agent && a.WindowStart.Unix() == start.Unix() &&
			a.Score == score && a.Severity.String() == sev && a.Kind == kind
		if err := match(recordAlert, id, body, agree); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return classify("read alerts", err)
	}
	rows.Close()

	rows, err = s.conn.Query(ctx,
		`SELECT request_id, body, agent_id, window_start, credential_id, action, mode
		 FROM revocations FINAL WHERE topic = ? AND kafka_partition = ?`, topic, uint32(partition))
	if err != nil {
		return classify("read revocations", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, body, agent, cred, action, mode string
			start                               time.Time
			r                                   detector.Revocation
		)
		if err := rows.Scan(&id, &body, &agent, &start, &cred, &action, &mode); err != nil {
			return classify("read revocations", err)
		}
		agree := json.Unmarshal([]byte(body), &r) == nil && r.AgentID == agent && r.WindowStart.Unix() == start.Unix() &&
			r.CredentialID == cred && r.Action == action && r.Mode == mode
		if err := match(recordRevocation, id, body, agree); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return classify("read revocations", err)
	}
	for key := range digests {
		typ, id, _ := strings.Cut(key, "\x00")
		return broken(BreakMissing, 0, typ, id, "%s %s in the chain is missing from its table", typ, id)
	}
	return nil
}
