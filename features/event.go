package features

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// ErrInvalidEvent is wrapped by every error Decode returns: the input does not
// satisfy event contract v1. Use errors.As with *FieldError for the details.
var ErrInvalidEvent = errors.New("invalid event")

// Reason is a bounded classification of why an event was rejected. It is safe
// to use as a metric label.
type Reason string

// The reasons Decode and the pipeline use.
const (
	ReasonBadJSON      Reason = "bad_json"
	ReasonMissingField Reason = "missing_field"
	ReasonBadType      Reason = "bad_type"
	ReasonBadValue     Reason = "bad_value"
	ReasonBadTimestamp Reason = "bad_timestamp"
	ReasonTooLarge     Reason = "too_large"
	// ReasonBadID: an identity field (event_id, agent_id, agent_class,
	// target_id, credential_id) is empty where required, longer than
	// MaxIDLen, or holds a character that would let two ids that print
	// alike be different agents (see Decoder.Decode).
	ReasonBadID Reason = "bad_id"
	// ReasonDuplicateKey: a contract field appears twice, or under another
	// spelling that encoding/json matches to it (case, or the Unicode
	// letters that fold to ASCII ones: "ſ" for s, "K" (Kelvin) for k).
	// JSON readers disagree on which of two members counts (Go's last
	// wins, others take the first or only match case-insensitively), so
	// a reader downstream could see another agent than the one scored.
	ReasonDuplicateKey Reason = "duplicate_key"
	// ReasonConflict is for the pipeline, never returned by Decode: the
	// event_id was seen with different content (Dedup.Check says Conflict).
	ReasonConflict Reason = "duplicate_conflict"
)

// FieldError describes why an event is invalid. Field is empty when the error
// is not about one field (for example malformed JSON).
type FieldError struct {
	Field  string
	Reason Reason
	Msg    string
	Offset int // byte offset in the input where the problem was found
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s at byte %d", e.Msg, e.Offset)
	}
	return fmt.Sprintf("field %q: %s", e.Field, e.Msg)
}

// Unwrap makes errors.Is(err, ErrInvalidEvent) hold.
func (e *FieldError) Unwrap() error { return ErrInvalidEvent }

// Decision is the policy engine's decision for a call.
type Decision uint8

// Decisions.
const (
	Allow Decision = iota + 1
	Deny
)

// DataClass is the sensitivity of the data a call touched.
type DataClass uint8

// Data classes; DataUnknown when the field is absent.
const (
	DataUnknown DataClass = iota
	DataPublic
	DataInternal
	DataConfidential
	DataRestricted
)

// Status is the outcome of a call.
type Status uint8

// Statuses; StatusUnknown when absent.
const (
	StatusUnknown Status = iota
	StatusOK
	StatusError
	StatusDenied
	StatusTimeout
)

// Auth is how the caller authenticated.
type Auth uint8

// Auth methods; AuthUnknown when absent.
const (
	AuthUnknown Auth = iota
	AuthMTLS
	AuthJWT
	AuthAPIKey
	AuthNone
)

// Attestation of the calling workload.
type Attestation uint8

// Attestation states.
const (
	AttestUnknown Attestation = iota
	AttestTrue
	AttestFalse
)

// Event is one decoded agent interaction (contract v1). The byte-slice fields
// are views that stay valid only until the next call to Decode on the same
// Decoder; copy what must be kept. Optional absent strings are empty.
type Event struct {
	EventID      []byte
	TS           int64 // Unix nanoseconds
	AgentID      []byte
	AgentClass   []byte
	TargetID     []byte
	Action       []byte
	Resource     []byte
	CredentialID []byte
	SrcIP        []byte
	SigKey       []byte
	Sig          []byte // the emitter's signature, base64 (see VerifyEvent)
	Decision     Decision
	DataClass    DataClass
	Status       Status
	Auth         Auth
	Attested     Attestation
	BytesIn      int64 // -1 when absent
	BytesOut     int64 // -1 when absent
	LatencyMS    float64
	Amount       float64
	HasLatency   bool
	HasSig       bool
}

// MaxIDLen bounds the identity fields (event_id, agent_id, agent_class,
// target_id, credential_id), in bytes after unescaping: they become alert
// labels, state-topic keys and ClickHouse values. Longer ones are rejected
// with ReasonBadID.
const MaxIDLen = 512

// MaxEventSize bounds one encoded event. Larger inputs are rejected with
// ReasonTooLarge before any parsing.
const MaxEventSize = 64 << 10

// Decoder decodes contract v1 events. The zero value is ready to use. A
// Decoder is not safe for concurrent use; give each goroutine its own.
type Decoder struct {
	scratch   []byte
	buf       []byte
	pos       int
	seen      uint32 // bit set of required fields present
	keys      uint32 // bit set of contract fields present (see contractNames)
	printable bool   // set by str
}

const (
	reqEventID = 1 << iota
	reqTS
	reqAgentID
	reqTargetID
	reqAction
	reqDecision
	reqAll = reqEventID | reqTS | reqAgentID | reqTargetID | reqAction | reqDecision
)

var requiredNames = [...]struct {
	bit  uint32
	name string
}{
	{reqEventID, "event_id"}, {reqTS, "ts"}, {reqAgentID, "agent_id"},
	{reqTargetID, "target_id"}, {reqAction, "action"}, {reqDecision, "decision"},
}

// Decode parses one JSON object in b into e, validating it against contract
// v1. Unknown fields are skipped.
//
// The identity fields (event_id, agent_id, agent_class, target_id,
// credential_id) are rejected with ReasonBadID, after unescaping, when they
// are empty (event_id, agent_id, target_id; an empty optional one is
// absent), longer than MaxIDLen bytes, start or end with white space, or hold
// a control (Cc) or format (Cf: zero-width, bidi overrides, BOM) character,
// a line or paragraph separator (Zl, Zp), U+FFFD (what a lone surrogate
// escape decodes to) or invalid UTF-8: such ids print like other ids, so one
// agent could pass for another or split itself into many. A contract field
// that appears twice, or under a spelling encoding/json takes for it
// ("Agent_ID"), is rejected with ReasonDuplicateKey: readers disagree on
// which member counts, and every reader must see the agent vigil scored. On error e is left partially filled and the
// error wraps ErrInvalidEvent. b must not be modified until e is no longer
// used.
func (d *Decoder) Decode(b []byte, e *Event) error {
	if len(b) > MaxEventSize {
		return &FieldError{Reason: ReasonTooLarge, Msg: fmt.Sprintf("event of %d bytes exceeds the %d byte limit", len(b), MaxEventSize)}
	}
	*e = Event{BytesIn: -1, BytesOut: -1}
	if cap(d.scratch) < len(b) {
		d.scratch = make([]byte, 0, len(b)+len(b)/2)
	}
	d.scratch = d.scratch[:0]
	d.buf, d.pos, d.seen, d.keys = b, 0, 0, 0
	err := d.object(e)
	d.buf = nil
	if err != nil {
		return err
	}
	if d.seen != reqAll {
		for _, r := range requiredNames {
			if d.seen&r.bit == 0 {
				return &FieldError{Field: r.name, Reason: ReasonMissingField, Msg: "required field is missing"}
			}
		}
	}
	return nil
}

func (d *Decoder) syntax(msg string) error {
	return &FieldError{Reason: ReasonBadJSON, Msg: "malformed JSON: " + msg, Offset: d.pos}
}

func (d *Decoder) ws() {
	for d.pos < len(d.buf) {
		switch d.buf[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *Decoder) object(e *Event) error {
	d.ws()
	if d.pos >= len(d.buf) || d.buf[d.pos] != '{' {
		return d.syntax("expected '{'")
	}
	d.pos++
	d.ws()
	if d.pos < len(d.buf) && d.buf[d.pos] == '}' {
		d.pos++
		return d.trailer()
	}
	for {
		d.ws()
		key, err := d.str()
		if err != nil {
			return err
		}
		d.ws()
		if d.pos >= len(d.buf) || d.buf[d.pos] != ':' {
			return d.syntax("expected ':'")
		}
		d.pos++
		d.ws()
		if err := d.field(key, e); err != nil {
			return err
		}
		d.ws()
		if d.pos >= len(d.buf) {
			return d.syntax("unexpected end of input")
		}
		switch d.buf[d.pos] {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return d.trailer()
		default:
			return d.syntax("expected ',' or '}'")
		}
	}
}

func (d *Decoder) trailer() error {
	d.ws()
	if d.pos != len(d.buf) {
		return d.syntax("data after the object")
	}
	return nil
}

// str reads a JSON string at d.pos and returns its unescaped bytes. Strings
// without escapes are views into the input; others are unescaped into
// d.scratch, whose capacity (≥ len(input)) guarantees it never reallocates.
// It sets d.printable when the string is printable ASCII (' '..'~') written
// without escapes.
func (d *Decoder) str() ([]byte, error) {
	if d.pos >= len(d.buf) || d.buf[d.pos] != '"' {
		return nil, d.syntax("expected string")
	}
	d.pos++
	start := d.pos
	b := d.buf
	i := d.pos
	hi := false // a byte ≥ 0x7f
	for {
		// Plain printable ASCII, the common case, is one table lookup a byte.
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) {
			d.pos = i
			return nil, d.syntax("unterminated string")
		}
		switch c := b[i]; {
		case c == '"':
			s := b[start:i]
			d.pos = i + 1
			if hi && !utf8.Valid(s) {
				return nil, d.syntax("invalid UTF-8 in string")
			}
			d.printable = !hi
			return s, nil
		case c == '\\':
			d.pos = i
			d.printable = false
			return d.strEscaped(start)
		case c < 0x20:
			d.pos = i
			return nil, d.syntax("control character in string")
		default: // ≥ 0x7f: UTF-8 validated once the string ends
			hi = true
			i++
		}
	}
}

// plain marks the bytes a JSON string holds as themselves: printable ASCII
// other than the quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func (d *Decoder) strEscaped(start int) ([]byte, error) {
	from := len(d.scratch)
	d.scratch = append(d.scratch, d.buf[start:d.pos]...)
	for d.pos < len(d.buf) {
		c := d.buf[d.pos]
		switch {
		case c == '"':
			d.pos++
			out := d.scratch[from:len(d.scratch):len(d.scratch)]
			if !utf8.Valid(out) {
				return nil, d.syntax("invalid UTF-8 in string")
			}
			return out, nil
		case c < 0x20:
			return nil, d.syntax("control character in string")
		case c != '\\':
			d.scratch = append(d.scratch, c)
			d.pos++
			continue
		}
		if d.pos+1 >= len(d.buf) {
			return nil, d.syntax("unterminated escape")
		}
		d.pos++
		switch esc := d.buf[d.pos]; esc {
		case '"', '\\', '/':
			d.scratch = append(d.scratch, esc)
		case 'b':
			d.scratch = append(d.scratch, '\b')
		case 'f':
			d.scratch = append(d.scratch, '\f')
		case 'n':
			d.scratch = append(d.scratch, '\n')
		case 'r':
			d.scratch = append(d.scratch, '\r')
		case 't':
			d.scratch = append(d.scratch, '\t')
		case 'u':
			r, ok := d.hex4(d.pos + 1)
			if !ok {
				return nil, d.syntax("bad \\u escape")
			}
			d.pos += 4
			if r >= 0xD800 && r < 0xDC00 { // surrogate pair
				if r2, ok := d.hex4(d.pos + 3); ok && d.buf[d.pos+1] == '\\' && d.buf[d.pos+2] == 'u' && r2 >= 0xDC00 && r2 < 0xE000 {
					r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
					d.pos += 6
				} else {
					r = 0xFFFD
				}
			} else if r >= 0xDC00 && r < 0xE000 {
				r = 0xFFFD
			}
			// A \uXXXX escape is 6 bytes and encodes to at most 4, a pair is
			// 12 bytes for 4: the scratch buffer cannot outgrow the input.
			d.scratch = appendRune(d.scratch, r)
		default:
			return nil, d.syntax("bad escape")
		}
		d.pos++
	}
	return nil, d.syntax("unterminated string")
}

func (d *Decoder) hex4(at int) (rune, bool) {
	if at+4 > len(d.buf) {
		return 0, false
	}
	var r rune
	for _, c := range d.buf[at : at+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

func appendRune(b []byte, r rune) []byte {
	switch {
	case r < 0x80:
		return append(b, byte(r))
	case r < 0x800:
		return append(b, 0xC0|byte(r>>6), 0x80|byte(r)&0x3F)
	case r < 0x10000:
		return append(b, 0xE0|byte(r>>12), 0x80|byte(r>>6)&0x3F, 0x80|byte(r)&0x3F)
	default:
		return append(b, 0xF0|byte(r>>18), 0x80|byte(r>>12)&0x3F, 0x80|byte(r>>6)&0x3F, 0x80|byte(r)&0x3F)
	}
}

// kind of the JSON value at d.pos, for type errors.
func (d *Decoder) isNull() bool {
	if d.pos+4 <= len(d.buf) && string(d.buf[d.pos:d.pos+4]) == "null" {
		d.pos += 4
		return true
	}
	return false
}

func typeErr(field, want string) error {
	return &FieldError{Field: field, Reason: ReasonBadType, Msg: "want " + want}
}

func valueErr(field, msg string) error {
	return &FieldError{Field: field, Reason: ReasonBadValue, Msg: msg}
}

func (d *Decoder) strField(name string, required bool) ([]byte, error) {
	if d.pos < len(d.buf) && d.buf[d.pos] != '"' {
		return nil, d.notString(name, required)
	}
	s, err := d.str()
	if err != nil {
		return nil, err
	}
	if required && len(s) == 0 {
		return nil, valueErr(name, "must not be empty")
	}
	if len(s) > 1024 {
		return nil, valueErr(name, "longer than 1024 bytes")
	}
	return s, nil
}

// notString handles a string field whose value is not a string: null is
// absent (nil error) if the field is optional, anything else a type error.
func (d *Decoder) notString(name string, required bool) error {
	if !required && d.isNull() {
		return nil
	}
	if err := d.skip(); err != nil {
		return err
	}
	return typeErr(name, "a string")
}

// contractNames are the fields of contract v1, indexed by their bit in
// Decoder.keys.
var contractNames = [...]string{
	"event_id", "ts", "agent_id", "agent_class", "target_id", "action", "decision", "resource",
	"credential_id", "src_ip", "sig_key", "sig", "data_class", "status", "auth", "attested",
	"bytes_in", "bytes_out", "latency_ms", "amount", "workload_version",
}

func (d *Decoder) field(key []byte, e *Event) error {
	var err error
	// k is the field's index in contractNames. The switch on the bytes
	// does not allocate.
	k := -1
	switch string(key) {
	case "event_id":
		k = 0
		e.EventID, err = d.idField("event_id", true)
		d.seen |= reqEventID
	case "ts":
		k = 1
		var s []byte
		if s, err = d.strField("ts", true); err == nil {
			ts, year, ok := parseRFC3339(s)
			if !ok {
				return &FieldError{Field: "ts", Reason: ReasonBadTimestamp, Msg: "not RFC 3339"}
			}
			if year == 0 || ts < minTS || ts > maxTS {
				return &FieldError{Field: "ts", Reason: ReasonBadTimestamp, Msg: "outside years 2000-2199"}
			}
			e.TS = ts
		}
		d.seen |= reqTS
	case "agent_id":
		k = 2
		e.AgentID, err = d.idField("agent_id", true)
		d.seen |= reqAgentID
	case "agent_class":
		k = 3
		e.AgentClass, err = d.idField("agent_class", false)
	case "target_id":
		k = 4
		e.TargetID, err = d.idField("target_id", true)
		d.seen |= reqTargetID
	case "action":
		k = 5
		e.Action, err = d.strField("action", true)
		d.seen |= reqAction
	case "decision":
		k = 6
		var s []byte
		if s, err = d.strField("decision", true); err == nil {
			switch string(s) {
			case "allow":
				e.Decision = Allow
			case "deny":
				e.Decision = Deny
			default:
				return valueErr("decision", `want "allow" or "deny"`)
			}
		}
		d.seen |= reqDecision
	case "resource":
		k = 7
		e.Resource, err = d.strField("resource", false)
	case "credential_id":
		k = 8
		e.CredentialID, err = d.idField("credential_id", false)
	case "src_ip":
		k = 9
		e.SrcIP, err = d.strField("src_ip", false)
	case "sig_key":
		k = 10
		e.SigKey, err = d.strField("sig_key", false)
	case "sig":
		k = 11
		e.Sig, err = d.strField("sig", false)
		e.HasSig = len(e.Sig) > 0
	case "data_class":
		k = 12
		var v uint8
		v, err = d.enumField("data_class", dataClassNames[:])
		e.DataClass = DataClass(v)
	case "status":
		k = 13
		var v uint8
		v, err = d.enumField("status", statusNames[:])
		e.Status = Status(v)
	case "auth":
		k = 14
		var v uint8
		v, err = d.enumField("auth", authNames[:])
		e.Auth = Auth(v)
	case "attested":
		k = 15
		e.Attested = AttestUnknown
		switch {
		case d.lit("true"):
			e.Attested = AttestTrue
		case d.lit("false"):
			e.Attested = AttestFalse
		case d.isNull():
		default:
			if err = d.skip(); err == nil {
				err = typeErr("attested", "true or false")
			}
		}
	case "bytes_in":
		k = 16
		e.BytesIn, err = d.intField("bytes_in")
	case "bytes_out":
		k = 17
		e.BytesOut, err = d.intField("bytes_out")
	case "latency_ms":
		k = 18
		e.LatencyMS, e.HasLatency, err = d.floatField("latency_ms")
	case "amount":
		k = 19
		e.Amount, _, err = d.floatField("amount")
	case "workload_version":
		k = 20
		err = d.skip()
	default:
		if err = d.skip(); err == nil {
			err = otherSpelling(key)
		}
	}
	if err != nil || k < 0 {
		return err
	}
	if d.keys&(1<<k) != 0 {
		return &FieldError{Field: contractNames[k], Reason: ReasonDuplicateKey, Msg: "appears twice"}
	}
	d.keys |= 1 << k
	return nil
}

// otherSpelling rejects a key that is not a contract field's name but that
// encoding/json would take for one (it matches names case-insensitively,
// with Unicode's simple folding).
func otherSpelling(key []byte) error {
	fold := false // upper case or non-ASCII: could fold to a name
	for _, c := range key {
		if c >= 0x80 || (c >= 'A' && c <= 'Z') {
			fold = true
			break
		}
	}
	if !fold {
		return nil
	}
	for _, name := range contractNames {
		if strings.EqualFold(bytesToString(key), name) {
			return &FieldError{Field: name, Reason: ReasonDuplicateKey, Msg: fmt.Sprintf("spelled %q: JSON readers differ on whether that is the same field", key)}
		}
	}
	return nil
}

// Names of the enumerated optional fields, indexed by their constants (index 0,
// unknown, is what an absent or null field decodes to).
var (
	dataClassNames = [...]string{DataPublic: "public", DataInternal: "internal", DataConfidential: "confidential", DataRestricted: "restricted"}
	statusNames    = [...]string{StatusOK: "ok", StatusError: "error", StatusDenied: "denied", StatusTimeout: "timeout"}
	authNames      = [...]string{AuthMTLS: "mtls", AuthJWT: "jwt", AuthAPIKey: "apikey", AuthNone: "none"}
)

// enumField decodes an optional string field that must be one of names[1:],
// returning its index, or 0 for null.
func (d *Decoder) enumField(field string, names []string) (uint8, error) {
	s, err := d.strField(field, false)
	if err != nil || s == nil {
		return 0, err
	}
	for i := 1; i < len(names); i++ {
		if string(s) == names[i] {
			return uint8(i), nil
		}
	}
	return 0, valueErr(field, "want "+strings.Join(names[1:len(names)-1], ", ")+" or "+names[len(names)-1])
}

func (d *Decoder) lit(s string) bool {
	if d.pos+len(s) <= len(d.buf) && string(d.buf[d.pos:d.pos+len(s)]) == s {
		d.pos += len(s)
		return true
	}
	return false
}

// number returns the bytes of a JSON number at d.pos, and whether they follow
// JSON's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *Decoder) number() ([]byte, bool) {
	start := d.pos
	b := d.buf
	digits := func() int {
		n := 0
		for d.pos < len(b) && b[d.pos] >= '0' && b[d.pos] <= '9' {
			d.pos++
			n++
		}
		return n
	}
	if d.pos < len(b) && b[d.pos] == '-' {
		d.pos++
	}
	lead := d.pos
	if n := digits(); n == 0 || (n > 1 && b[lead] == '0') {
		return b[start:d.pos], false
	}
	if d.pos < len(b) && b[d.pos] == '.' {
		d.pos++
		if digits() == 0 {
			return b[start:d.pos], false
		}
	}
	if d.pos < len(b) && (b[d.pos] == 'e' || b[d.pos] == 'E') {
		d.pos++
		if d.pos < len(b) && (b[d.pos] == '+' || b[d.pos] == '-') {
			d.pos++
		}
		if digits() == 0 {
			return b[start:d.pos], false
		}
	}
	return b[start:d.pos], true
}

func (d *Decoder) intField(name string) (int64, error) {
	if d.isNull() {
		return -1, nil
	}
	if d.pos >= len(d.buf) || (d.buf[d.pos] != '-' && (d.buf[d.pos] < '0' || d.buf[d.pos] > '9')) {
		if err := d.skip(); err != nil {
			return 0, err
		}
		return 0, typeErr(name, "an integer")
	}
	num, ok := d.number()
	if !ok {
		return 0, d.syntax("bad number")
	}
	if num[0] == '-' {
		return 0, valueErr(name, "must be ≥ 0")
	}
	var v int64
	for _, c := range num {
		if c < '0' || c > '9' {
			// 1e3 or 12.0 are numbers but not integers.
			f, err := strconv.ParseFloat(bytesToString(num), 64)
			if err != nil || f != math.Trunc(f) || f > math.MaxInt64/2 {
				return 0, typeErr(name, "an integer")
			}
			return int64(f), nil
		}
		if v > (math.MaxInt64-9)/10 {
			return 0, valueErr(name, "too large")
		}
		v = v*10 + int64(c-'0')
	}
	return v, nil
}

func (d *Decoder) floatField(name string) (float64, bool, error) {
	if d.isNull() {
		return 0, false, nil
	}
	if d.pos >= len(d.buf) || (d.buf[d.pos] != '-' && (d.buf[d.pos] < '0' || d.buf[d.pos] > '9')) {
		if err := d.skip(); err != nil {
			return 0, false, err
		}
		return 0, false, typeErr(name, "a number")
	}
	num, ok := d.number()
	if !ok {
		return 0, false, d.syntax("bad number")
	}
	f, ok := parseFloat(num)
	if !ok {
		return 0, false, d.syntax("bad number")
	}
	if f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false, valueErr(name, "must be a finite number ≥ 0")
	}
	return f, true, nil
}

var pow10 = [...]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15}

// parseFloat handles plain decimals exactly (mantissa < 2^53, ≤ 15 fraction
// digits: one correctly rounded division) and defers anything else to strconv.
func parseFloat(b []byte) (float64, bool) {
	neg := false
	i := 0
	if i < len(b) && b[i] == '-' {
		neg = true
		i++
	}
	var m uint64
	frac, nd := -1, 0
	for ; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= '0' && c <= '9':
			m = m*10 + uint64(c-'0')
			nd++
			if frac >= 0 {
				frac++
			}
		case c == '.' && frac < 0:
			frac = 0
		default:
			nd = 100 // exponent or oddity: slow path
			i = len(b)
		}
	}
	if nd > 15 || frac == 0 || m >= 1<<53 {
		f, err := strconv.ParseFloat(bytesToString(b), 64)
		return f, err == nil
	}
	f := float64(m)
	if frac > 0 {
		f /= pow10[frac]
	}
	if neg {
		f = -f
	}
	return f, true
}

// bytesToString views b as a string without copying. Only for callees that do
// not retain the string (strconv copies it into its errors).
func bytesToString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// skip skips one JSON value of any type.
func (d *Decoder) skip() error {
	return d.skipDepth(0)
}

func (d *Decoder) skipDepth(depth int) error {
	if depth > 32 {
		return d.syntax("nesting deeper than 32")
	}
	d.ws()
	if d.pos >= len(d.buf) {
		return d.syntax("unexpected end of input")
	}
	switch c := d.buf[d.pos]; {
	case c == '"':
		_, err := d.str()
		return err
	case c == '{' || c == '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		d.pos++
		d.ws()
		if d.pos < len(d.buf) && d.buf[d.pos] == closer {
			d.pos++
			return nil
		}
		for {
			d.ws()
			if c == '{' {
				if _, err := d.str(); err != nil {
					return err
				}
				d.ws()
				if d.pos >= len(d.buf) || d.buf[d.pos] != ':' {
					return d.syntax("expected ':'")
				}
				d.pos++
			}
			if err := d.skipDepth(depth + 1); err != nil {
				return err
			}
			d.ws()
			if d.pos >= len(d.buf) {
				return d.syntax("unexpected end of input")
			}
			if d.buf[d.pos] == ',' {
				d.pos++
				continue
			}
			if d.buf[d.pos] == closer {
				d.pos++
				return nil
			}
			return d.syntax("expected ',' or closing bracket")
		}
	case c == '-' || (c >= '0' && c <= '9'):
		if num, ok := d.number(); !ok {
			return d.syntax("bad number")
		} else if _, ok := parseFloat(num); !ok {
			return d.syntax("bad number")
		}
		return nil
	case d.lit("true") || d.lit("false") || d.isNull():
		return nil
	default:
		return d.syntax("unexpected character")
	}
}
