package features

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// flat is an Event with owned strings: comparable with == and printable.
type flat struct {
	EventID, AgentID, AgentClass, TargetID, Action string
	Resource, CredentialID, SrcIP, SigKey          string
	TS                                             int64
	Decision                                       Decision
	DataClass                                      DataClass
	Status                                         Status
	Auth                                           Auth
	Attested                                       Attestation
	BytesIn, BytesOut                              int64
	LatencyMS, Amount                              float64
	HasLatency, HasSig                             bool
}

func flatten(e *Event) flat {
	return flat{
		EventID: string(e.EventID), AgentID: string(e.AgentID), AgentClass: string(e.AgentClass),
		TargetID: string(e.TargetID), Action: string(e.Action), Resource: string(e.Resource),
		CredentialID: string(e.CredentialID), SrcIP: string(e.SrcIP), SigKey: string(e.SigKey),
		TS: e.TS, Decision: e.Decision, DataClass: e.DataClass, Status: e.Status, Auth: e.Auth,
		Attested: e.Attested, BytesIn: e.BytesIn, BytesOut: e.BytesOut,
		LatencyMS: e.LatencyMS, Amount: e.Amount, HasLatency: e.HasLatency, HasSig: e.HasSig,
	}
}

// diff lists the fields in which a and b differ, one per line.
func (a flat) diff(b flat) string {
	var sb strings.Builder
	add := func(name string, x, y any) {
		if x != y {
			fmt.Fprintf(&sb, "  %s: got %#v, want %#v\n", name, x, y)
		}
	}
	add("EventID", a.EventID, b.EventID)
	add("AgentID", a.AgentID, b.AgentID)
	add("AgentClass", a.AgentClass, b.AgentClass)
	add("TargetID", a.TargetID, b.TargetID)
	add("Action", a.Action, b.Action)
	add("Resource", a.Resource, b.Resource)
	add("CredentialID", a.CredentialID, b.CredentialID)
	add("SrcIP", a.SrcIP, b.SrcIP)
	add("SigKey", a.SigKey, b.SigKey)
	if a.TS != b.TS {
		fmt.Fprintf(&sb, "  TS: got %d (%s), want %d (%s)\n", a.TS, time.Unix(0, a.TS).UTC().Format(time.RFC3339Nano),
			b.TS, time.Unix(0, b.TS).UTC().Format(time.RFC3339Nano))
	}
	add("Decision", a.Decision, b.Decision)
	add("DataClass", a.DataClass, b.DataClass)
	add("Status", a.Status, b.Status)
	add("Auth", a.Auth, b.Auth)
	add("Attested", a.Attested, b.Attested)
	add("BytesIn", a.BytesIn, b.BytesIn)
	add("BytesOut", a.BytesOut, b.BytesOut)
	add("LatencyMS", a.LatencyMS, b.LatencyMS)
	add("Amount", a.Amount, b.Amount)
	add("HasLatency", a.HasLatency, b.HasLatency)
	add("HasSig", a.HasSig, b.HasSig)
	return sb.String()
}

// kv is one member of a JSON object: a key and its raw JSON value.
type kv struct{ k, v string }

// obj renders members as a JSON object, in order.
func obj(fs []kv) string {
	var sb strings.Builder
	sb.WriteByte('{')
	for i, f := range fs {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`"` + f.k + `":` + f.v)
	}
	sb.WriteByte('}')
	return sb.String()
}

// with returns a copy of fs with k set to the raw JSON v (appended if absent).
func with(fs []kv, k, v string) []kv {
	out := append([]kv(nil), fs...)
	for i := range out {
		if out[i].k == k {
			out[i].v = v
			return out
		}
	}
	return append(out, kv{k, v})
}

// without returns a copy of fs without k.
func without(fs []kv, k string) []kv {
	var out []kv
	for _, f := range fs {
		if f.k != k {
			out = append(out, f)
		}
	}
	return out
}

// fullFields is an event carrying every contract v1 field.
func fullFields() []kv {
	return []kv{
		{"event_id", `"9b2f6c1e-4a7d-4e0b-8c3f-1d2e3f4a5b6c"`},
		{"ts", `"2026-03-02T09:15:03.123456789Z"`},
		{"agent_id", `"spiffe://bank.example/agent/payments-bot-07"`},
		{"agent_class", `"payments-bot"`},
		{"target_id", `"spiffe://bank.example/svc/ledger"`},
		{"action", `"POST /v1/transfers"`},
		{"decision", `"allow"`},
		{"resource", `"account/DE89370400440532013000"`},
		{"data_class", `"confidential"`},
		{"status", `"ok"`},
		{"bytes_in", `512`},
		{"bytes_out", `2048`},
		{"latency_ms", `12.5`},
		{"amount", `250.75`},
		{"credential_id", `"x509:4f:2a:9c"`},
		{"auth", `"mtls"`},
		{"attested", `true`},
		{"src_ip", `"10.20.30.40"`},
		{"sig", `"c2lnbmF0dXJlLWJ5dGVz"`},
		{"sig_key", `"emitter-key-3"`},
	}
}

func fullWant() flat {
	return flat{
		EventID:      "9b2f6c1e-4a7d-4e0b-8c3f-1d2e3f4a5b6c",
		TS:           time.Date(2026, 3, 2, 9, 15, 3, 123456789, time.UTC).UnixNano(),
		AgentID:      "spiffe://bank.example/agent/payments-bot-07",
		AgentClass:   "payments-bot",
		TargetID:     "spiffe://bank.example/svc/ledger",
		Action:       "POST /v1/transfers",
		Decision:     Allow,
		Resource:     "account/DE89370400440532013000",
		DataClass:    DataConfidential,
		Status:       StatusOK,
		BytesIn:      512,
		BytesOut:     2048,
		LatencyMS:    12.5,
		HasLatency:   true,
		Amount:       250.75,
		CredentialID: "x509:4f:2a:9c",
		Auth:         AuthMTLS,
		Attested:     AttestTrue,
		SrcIP:        "10.20.30.40",
		HasSig:       true,
		SigKey:       "emitter-key-3",
	}
}

// minimalFields carries only the required fields.
func minimalFields() []kv {
	return []kv{
		{"event_id", `"e-1"`},
		{"ts", `"2026-03-02T09:15:03Z"`},
		{"agent_id", `"agent-1"`},
		{"target_id", `"tool:search"`},
		{"action", `"search"`},
		{"decision", `"deny"`},
	}
}

func minimalWant() flat {
	return flat{
		EventID:  "e-1",
		TS:       time.Date(2026, 3, 2, 9, 15, 3, 0, time.UTC).UnixNano(),
		AgentID:  "agent-1",
		TargetID: "tool:search",
		Action:   "search",
		Decision: Deny,
		BytesIn:  -1,
		BytesOut: -1,
	}
}

// typicalEvent is a realistic ~350-byte event, used by the allocation test and
// the benchmarks.
var typicalEvent = []byte(`{"event_id":"01J9ZK3V7Q2W8X","ts":"2026-03-02T09:15:03.123Z",` +
	`"agent_id":"spiffe://bank.example/agent/payments-bot-07","target_id":"spiffe://bank.example/svc/ledger",` +
	`"action":"POST /v1/transfers","decision":"allow","data_class":"confidential","status":"ok",` +
	`"bytes_in":512,"bytes_out":2048,"latency_ms":12.5,"amount":250.75,"auth":"mtls","attested":true}`)

// ref is what encoding/json makes of an input, read the way contract v1 reads
// it. It is the oracle for the comparison test and the fuzz target.
type ref struct {
	f    flat
	tsOK bool      // time.Parse(RFC3339Nano) accepted ts
	t    time.Time // the instant when tsOK
	m    map[string]any
}

// refDecode decodes b with encoding/json (numbers kept as json.Number, so no
// number in an unknown field can fail) and maps the contract fields. It
// returns an error when encoding/json fails or a known field has a type or
// value contract v1 does not allow; it does not check ranges or presence.
func refDecode(b []byte) (ref, error) {
	var r ref
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&r.m); err != nil {
		return r, err
	}
	if r.m == nil {
		return r, fmt.Errorf("not an object")
	}
	str := func(k string) (string, error) {
		switch v := r.m[k].(type) {
		case nil:
			return "", nil
		case string:
			return v, nil
		default:
			return "", fmt.Errorf("%s: %T", k, v)
		}
	}
	var err error
	strs := []struct {
		k   string
		dst *string
	}{
		{"event_id", &r.f.EventID}, {"agent_id", &r.f.AgentID}, {"agent_class", &r.f.AgentClass},
		{"target_id", &r.f.TargetID}, {"action", &r.f.Action}, {"resource", &r.f.Resource},
		{"credential_id", &r.f.CredentialID}, {"src_ip", &r.f.SrcIP}, {"sig_key", &r.f.SigKey},
	}
	for _, s := range strs {
		if *s.dst, err = str(s.k); err != nil {
			return r, err
		}
	}
	enum := func(k string, names ...string) (int, error) {
		s, err := str(k)
		if err != nil || s == "" && r.m[k] == nil {
			return 0, err
		}
		for i, n := range names {
			if s == n {
				return i + 1, nil
			}
		}
		return 0, fmt.Errorf("%s: bad value %q", k, s)
	}
	var n int
	if n, err = enum("decision", "allow", "deny"); err != nil {
		return r, err
	}
	r.f.Decision = Decision(n)
	if n, err = enum("data_class", "public", "internal", "confidential", "restricted"); err != nil {
		return r, err
	}
	r.f.DataClass = DataClass(n)
	if n, err = enum("status", "ok", "error", "denied", "timeout"); err != nil {
		return r, err
	}
	r.f.Status = Status(n)
	if n, err = enum("auth", "mtls", "jwt", "apikey", "none"); err != nil {
		return r, err
	}
	r.f.Auth = Auth(n)
	switch v := r.m["attested"].(type) {
	case nil:
	case bool:
		r.f.Attested = AttestFalse
		if v {
			r.f.Attested = AttestTrue
		}
	default:
		return r, fmt.Errorf("attested: %T", v)
	}
	num := func(k string) (float64, bool, error) {
		switch v := r.m[k].(type) {
		case nil:
			return 0, false, nil
		case json.Number:
			f, err := v.Float64()
			return f, err == nil, err
		default:
			return 0, false, fmt.Errorf("%s: %T", k, v)
		}
	}
	integer := func(k string) (int64, error) {
		if n, ok := r.m[k].(json.Number); ok {
			if i, err := n.Int64(); err == nil {
				return i, nil
			}
		}
		f, ok, err := num(k)
		if err != nil || !ok {
			return -1, err
		}
		return int64(f), nil
	}
	if r.f.BytesIn, err = integer("bytes_in"); err != nil {
		return r, err
	}
	if r.f.BytesOut, err = integer("bytes_out"); err != nil {
		return r, err
	}
	if r.f.LatencyMS, r.f.HasLatency, err = num("latency_ms"); err != nil {
		return r, err
	}
	if r.f.Amount, _, err = num("amount"); err != nil {
		return r, err
	}
	sig, err := str("sig")
	if err != nil {
		return r, err
	}
	r.f.HasSig = sig != ""
	ts, err := str("ts")
	if err != nil {
		return r, err
	}
	if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
		r.t, r.tsOK = t, true
		r.f.TS = t.UnixNano()
	}
	return r, nil
}
