package sim

import (
	"strconv"
	"time"
)

// event is one generated interaction, ready to be formatted.
type event struct {
	ts        int64  // Unix milliseconds
	id        uint64 // formatted as 16 hex digits
	agentID   string
	class     string // "" omits agent_class
	target    string
	action    string
	decision  string
	resPrefix string // "" omits resource
	resNum    int64
	dataClass string
	status    string
	bytesIn   int64
	bytesOut  int64
	latency   float64
	amount    float64 // < 0 omits amount
	credID    string
	auth      string
	attested  bool
	srcIP     string
}

// defect selects how a deliberately invalid line is broken.
type defect int

const (
	defectNone      defect = iota
	defectTruncated        // bad JSON: the object is cut in half
	defectNoAgent          // required agent_id missing
	defectNoTarget         // required target_id missing
	defectBadTS            // ts is not a valid RFC 3339 time
	defectBadType          // bytes_out is a string
	numDefects
)

// formatter appends events as contract-v1 JSON lines. It caches the date part of the
// timestamp, which changes once a day.
type formatter struct {
	day    int64
	prefix []byte // "2006-01-02T" of day
}

func (f *formatter) appendTS(b []byte, ms int64) []byte {
	day := ms / 86_400_000
	if ms < 0 && ms%86_400_000 != 0 {
		day--
	}
	if f.prefix == nil || day != f.day {
		f.day = day
		f.prefix = time.UnixMilli(day*86_400_000).UTC().AppendFormat(f.prefix[:0], "2006-01-02T")
	}
	b = append(b, f.prefix...)
	rem := ms - day*86_400_000
	b = append2(b, rem/3_600_000)
	b = append(b, ':')
	b = append2(b, rem/60_000%60)
	b = append(b, ':')
	b = append2(b, rem/1000%60)
	b = append(b, '.')
	ms3 := rem % 1000
	b = append(b, byte('0'+ms3/100), byte('0'+ms3/10%10), byte('0'+ms3%10))
	return append(b, 'Z')
}

func append2(b []byte, v int64) []byte { return append(b, byte('0'+v/10), byte('0'+v%10)) }

const hexDigits = "0123456789abcdef"

func appendHex64(b []byte, v uint64) []byte {
	for s := 60; s >= 0; s -= 4 {
		b = append(b, hexDigits[(v>>uint(s))&0xf])
	}
	return b
}

// appendStr appends s as a JSON string. Generated strings are plain ASCII, so the fast
// path copies them; anything else is escaped.
func appendStr(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			return strconv.AppendQuoteToASCII(b, s) // not reached for generated data
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendKey(b []byte, key string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

// appendEvent appends e as one JSON line; d != defectNone breaks it deliberately (and
// gives it a distinct event_id, so it never collides with a valid event).
func (f *formatter) appendEvent(b []byte, e *event, d defect) []byte {
	b = append(b, `{"event_id":"`...)
	b = appendHex64(b, e.id)
	if d != defectNone {
		b = append(b, "-x"...)
	}
	b = append(b, `","ts":`...)
	if d == defectBadTS {
		switch e.id % 3 {
		case 0:
			b = append(b, `"2026-02-30T25:61:00Z"`...)
		case 1:
			b = append(b, `"yesterday"`...)
		default:
			b = strconv.AppendInt(b, e.ts/1000, 10) // a number, not a string
		}
	} else {
		b = append(b, '"')
		b = f.appendTS(b, e.ts)
		b = append(b, '"')
	}
	if d != defectNoAgent {
		b = appendKey(b, "agent_id")
		b = appendStr(b, e.agentID)
	}
	if e.class != "" {
		b = appendKey(b, "agent_class")
		b = appendStr(b, e.class)
	}
	if d != defectNoTarget {
		b = appendKey(b, "target_id")
		b = appendStr(b, e.target)
	}
	b = appendKey(b, "action")
	b = appendStr(b, e.action)
	b = appendKey(b, "decision")
	b = appendStr(b, e.decision)
	if e.resPrefix != "" {
		b = appendKey(b, "resource")
		b = append(b, '"')
		b = append(b, e.resPrefix...)
		b = strconv.AppendInt(b, e.resNum, 10)
		b = append(b, '"')
	}
	b = appendKey(b, "data_class")
	b = appendStr(b, e.dataClass)
	b = appendKey(b, "status")
	b = appendStr(b, e.status)
	b = appendKey(b, "bytes_in")
	b = strconv.AppendInt(b, e.bytesIn, 10)
	b = appendKey(b, "bytes_out")
	if d == defectBadType {
		b = append(b, '"')
		b = strconv.AppendInt(b, e.bytesOut/1000, 10)
		b = append(b, `kb"`...)
	} else {
		b = strconv.AppendInt(b, e.bytesOut, 10)
	}
	b = appendKey(b, "latency_ms")
	b = strconv.AppendFloat(b, e.latency, 'f', 1, 64)
	if e.amount >= 0 {
		b = appendKey(b, "amount")
		b = strconv.AppendFloat(b, e.amount, 'f', 2, 64)
	}
	b = appendKey(b, "credential_id")
	b = appendStr(b, e.credID)
	b = appendKey(b, "auth")
	b = appendStr(b, e.auth)
	b = appendKey(b, "attested")
	b = strconv.AppendBool(b, e.attested)
	b = appendKey(b, "src_ip")
	b = appendStr(b, e.srcIP)
	b = append(b, '}')
	if d == defectTruncated {
		b = b[:len(b)/2]
	}
	return append(b, '\n')
}
