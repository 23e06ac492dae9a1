package features

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

type validCase struct {
	name string
	in   string
	want flat
}

func mod(f flat, fn func(*flat)) flat {
	fn(&f)
	return f
}

// deepJSON nests an array n levels deep around a small object.
func deepJSON(n int) string {
	return strings.Repeat("[", n) + `{"k":"v"}` + strings.Repeat("]", n)
}

func validDecodeCases() []validCase {
	full, min := fullWant(), minimalWant()
	ts := func(s string) int64 {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			panic(err)
		}
		return t.UnixNano()
	}
	long := strings.Repeat("r", 1024)
	return []validCase{
		{"full event", obj(fullFields()), full},
		{"minimal event", obj(minimalFields()), min},
		{
			"fields reversed, whitespace everywhere",
			func() string {
				fs := fullFields()
				var parts []string
				for i := len(fs) - 1; i >= 0; i-- {
					parts = append(parts, "\n\t\""+fs[i].k+"\" \r:\t "+fs[i].v+" ")
				}
				return " \n{ " + strings.Join(parts, ",") + "\n}\r\n "
			}(),
			full,
		},
		{
			"string escapes",
			obj(with(with(with(with(with(with(with(minimalFields(),
				"action", `"say \"hi\" \\ now"`),
				"agent_id", `"spiffe://bank.example/agent/caf\u00e9-bot-01"`),
				"target_id", `"tool:\ud83d\ude80 launch"`),
				"resource", `"a\/b\n\t\r\b\f|"`),
				"credential_id", `"\u0041\u00DF\u6771\uD834\uDD1E"`),
				"src_ip", `"lone \ud800 high, lone \udc00 low, \ud800\u0041 unpaired"`),
				"sig_key", `"\u0000nul"`)),
			mod(min, func(f *flat) {
				f.Action = `say "hi" \ now`
				f.AgentID = "spiffe://bank.example/agent/café-bot-01"
				f.TargetID = "tool:🚀 launch"
				f.Resource = "a/b\n\t\r\b\f|"
				f.CredentialID = "Aß東𝄞"
				f.SrcIP = "lone \uFFFD high, lone \uFFFD low, \uFFFDA unpaired"
				f.SigKey = "\x00nul"
			}),
		},
		{
			"raw UTF-8 passes through",
			obj(with(minimalFields(), "target_id", `"café 東京 🚀"`)),
			mod(min, func(f *flat) { f.TargetID = "café 東京 🚀" }),
		},
		{
			"escaped key names",
			obj([]kv{
				{`event\u005fid`, `"e-1"`}, {`\u0074s`, `"2026-03-02T09:15:03Z"`}, {"agent_id", `"agent-1"`},
				{"target_id", `"tool:search"`}, {"action", `"search"`}, {`decisio\u006e`, `"\u0064eny"`},
			}),
			min,
		},
		{
			"unknown fields of every type are skipped",
			obj([]kv{
				{"x_obj", `{"a":{"b":[1,2,{"c":null}]},"d":"}","e":{}}`},
				{"event_id", `"e-1"`},
				{"x_arr", `[[],{},"]",-0.5e-3,true,false,null,[["["]]]`},
				{"ts", `"2026-03-02T09:15:03Z"`},
				{"x_num", `-12.5E+3`},
				{"x_int", `0`},
				{"agent_id", `"agent-1"`},
				{"x_true", `true`},
				{"x_false", `false`},
				{"target_id", `"tool:search"`},
				{"x_null", `null`},
				{"x_str", `"with \"escapes\" \u00e9 and \\"`},
				{"action", `"search"`},
				{"x_deep", deepJSON(30)},
				{"decision", `"deny"`},
				{"x_big", `123456789012345678901234567890`},
				{"x_empty", `""`},
				{"event_id_2", `"not the id"`},
			}),
			min,
		},
		{
			"null for every optional field",
			obj(append(minimalFields(),
				kv{"agent_class", "null"}, kv{"resource", "null"}, kv{"data_class", "null"}, kv{"status", "null"},
				kv{"bytes_in", "null"}, kv{"bytes_out", "null"}, kv{"latency_ms", "null"}, kv{"amount", "null"},
				kv{"credential_id", "null"}, kv{"auth", "null"}, kv{"attested", "null"}, kv{"src_ip", "null"},
				kv{"sig", "null"}, kv{"sig_key", "null"})),
			min,
		},
		{
			"integers written as floats",
			obj(with(with(minimalFields(), "bytes_in", `1e3`), "bytes_out", `12.0`)),
			mod(min, func(f *flat) { f.BytesIn, f.BytesOut = 1000, 12 }),
		},
		{
			"more integer spellings",
			obj(with(with(minimalFields(), "bytes_in", `1.5E2`), "bytes_out", `0`)),
			mod(min, func(f *flat) { f.BytesIn, f.BytesOut = 150, 0 }),
		},
		{
			"large bytes",
			obj(with(minimalFields(), "bytes_out", `922337203685477579`)),
			mod(min, func(f *flat) { f.BytesOut = 922337203685477579 }),
		},
		{
			"numbers",
			obj(with(with(minimalFields(), "latency_ms", `0`), "amount", `1.5e3`)),
			mod(min, func(f *flat) { f.HasLatency, f.Amount = true, 1500 }),
		},
		{
			"decimal fractions are correctly rounded",
			obj(with(with(minimalFields(), "latency_ms", `0.1`), "amount", `1234567.8912345`)),
			mod(min, func(f *flat) { f.LatencyMS, f.HasLatency, f.Amount = 0.1, true, 1234567.8912345 }),
		},
		{
			"long decimal takes the slow path",
			obj(with(minimalFields(), "amount", `0.30000000000000004441`)),
			mod(min, func(f *flat) { f.Amount = 0.30000000000000004441 }),
		},
		{
			"ts with positive offset",
			obj(with(minimalFields(), "ts", `"2026-03-02T10:15:03+01:00"`)),
			min,
		},
		{
			"ts with negative offset",
			obj(with(minimalFields(), "ts", `"2026-03-02T03:45:03-05:30"`)),
			min,
		},
		{
			"ts lower-case t and z (RFC 3339 section 5.6)",
			obj(with(minimalFields(), "ts", `"2026-03-02t09:15:03z"`)),
			min,
		},
		{
			"ts fraction beyond nanoseconds is truncated",
			obj(with(minimalFields(), "ts", `"2026-03-02T09:15:03.123456789999Z"`)),
			mod(min, func(f *flat) { f.TS = ts("2026-03-02T09:15:03.123456789Z") }),
		},
		{
			"ts one fraction digit",
			obj(with(minimalFields(), "ts", `"2026-03-02T09:15:03.5Z"`)),
			mod(min, func(f *flat) { f.TS = ts("2026-03-02T09:15:03.5Z") }),
		},
		{
			"ts leap second folds into second 59",
			obj(with(minimalFields(), "ts", `"2016-12-31T23:59:60.25Z"`)),
			mod(min, func(f *flat) { f.TS = ts("2016-12-31T23:59:59.25Z") }),
		},
		{
			"ts leap day",
			obj(with(minimalFields(), "ts", `"2000-02-29T12:00:00Z"`)),
			mod(min, func(f *flat) { f.TS = ts("2000-02-29T12:00:00Z") }),
		},
		{
			"ts first instant in range",
			obj(with(minimalFields(), "ts", `"2000-01-01T00:00:00Z"`)),
			mod(min, func(f *flat) { f.TS = ts("2000-01-01T00:00:00Z") }),
		},
		{
			"ts last instant in range",
			obj(with(minimalFields(), "ts", `"2199-12-31T23:59:59.999999999Z"`)),
			mod(min, func(f *flat) { f.TS = ts("2199-12-31T23:59:59.999999999Z") }),
		},
		{
			"every enum value, second of each",
			obj(append(with(minimalFields(), "decision", `"allow"`),
				kv{"data_class", `"internal"`}, kv{"status", `"error"`}, kv{"auth", `"jwt"`}, kv{"attested", `false`})),
			mod(min, func(f *flat) {
				f.Decision, f.DataClass, f.Status, f.Auth, f.Attested = Allow, DataInternal, StatusError, AuthJWT, AttestFalse
			}),
		},
		{
			"enum values, third of each",
			obj(append(minimalFields(), kv{"data_class", `"public"`}, kv{"status", `"denied"`}, kv{"auth", `"apikey"`})),
			mod(min, func(f *flat) { f.DataClass, f.Status, f.Auth = DataPublic, StatusDenied, AuthAPIKey }),
		},
		{
			"enum values, fourth of each",
			obj(append(minimalFields(), kv{"data_class", `"restricted"`}, kv{"status", `"timeout"`}, kv{"auth", `"none"`})),
			mod(min, func(f *flat) { f.DataClass, f.Status, f.Auth = DataRestricted, StatusTimeout, AuthNone }),
		},
		{
			"empty optional strings",
			obj(append(minimalFields(), kv{"agent_class", `""`}, kv{"resource", `""`}, kv{"sig", `""`})),
			min,
		},
		{
			"1024-byte optional string",
			obj(with(minimalFields(), "resource", `"`+long+`"`)),
			mod(min, func(f *flat) { f.Resource = long }),
		},
		{
			"an unknown field twice",
			obj(append(minimalFields(), kv{"x", `1`}, kv{"x", `{"agent_id":"other"}`}, kv{"Agent", `2`})),
			min,
		},
	}
}

func TestDecodeValid(t *testing.T) {
	for _, tc := range validDecodeCases() {
		t.Run(tc.name, func(t *testing.T) {
			var d Decoder
			var e Event
			if err := d.Decode([]byte(tc.in), &e); err != nil {
				t.Fatalf("Decode(%s): %v", tc.in, err)
			}
			if got := flatten(&e); got != tc.want {
				t.Errorf("Decode(%s) differs:\n%s", tc.in, got.diff(tc.want))
			}
		})
	}
}

type invalidCase struct {
	name   string
	in     string
	field  string // "" for errors not about one field
	reason Reason
	msg    string // exact err.Error(); "" to skip the check
}

func invalidDecodeCases() []invalidCase {
	var cs []invalidCase
	for _, f := range []string{"event_id", "ts", "agent_id", "target_id", "action", "decision"} {
		cs = append(cs, invalidCase{
			"missing " + f, obj(without(fullFields(), f)), f, ReasonMissingField,
			fmt.Sprintf("field %q: required field is missing", f),
		})
	}
	min := minimalFields()
	badType := func(name, k, v string) invalidCase {
		return invalidCase{name, obj(with(min, k, v)), k, ReasonBadType, ""}
	}
	badValue := func(name, k, v string) invalidCase {
		return invalidCase{name, obj(with(min, k, v)), k, ReasonBadValue, ""}
	}
	badTS := func(v string) invalidCase {
		return invalidCase{"ts " + v, obj(with(min, "ts", v)), "ts", ReasonBadTimestamp, `field "ts": not RFC 3339`}
	}
	absurdTS := func(v string) invalidCase {
		return invalidCase{"ts " + v, obj(with(min, "ts", v)), "ts", ReasonBadTimestamp, `field "ts": outside years 2000-2199`}
	}
	badJSON := func(name, in string) invalidCase {
		return invalidCase{name, in, "", ReasonBadJSON, ""}
	}
	full := obj(fullFields())
	cs = append(cs,
		invalidCase{"empty object", `{}`, "event_id", ReasonMissingField, `field "event_id": required field is missing`},
		invalidCase{"only unknown fields", `{"x":1,"y":[2]}`, "event_id", ReasonMissingField, ""},

		badType("bytes_in as string", "bytes_in", `"12"`),
		badType("bytes_out as bool", "bytes_out", `true`),
		badType("bytes_in fractional", "bytes_in", `1.5`),
		badType("bytes_in tiny exponent", "bytes_in", `1e-1`),
		badType("bytes_in as object", "bytes_in", `{"n":1}`),
		badType("attested as string", "attested", `"yes"`),
		badType("attested as number", "attested", `1`),
		badType("ts as number", "ts", `123`),
		badType("event_id as number", "event_id", `42`),
		badType("event_id null", "event_id", `null`),
		badType("agent_id as object", "agent_id", `{}`),
		badType("action as array", "action", `["search"]`),
		badType("decision as bool", "decision", `true`),
		badType("latency_ms as string", "latency_ms", `"3"`),
		badType("amount as string", "amount", `"1.00"`),
		badType("data_class as number", "data_class", `3`),
		badType("agent_class as array", "agent_class", `[]`),
		badType("sig as number", "sig", `1`),
		invalidCase{"type error message", obj(with(min, "bytes_in", `"12"`)), "bytes_in", ReasonBadType, `field "bytes_in": want an integer`},

		badValue("decision maybe", "decision", `"maybe"`),
		badValue("decision is case-sensitive", "decision", `"ALLOW"`),
		badValue("negative bytes_out", "bytes_out", `-1`),
		badValue("negative bytes_in", "bytes_in", `-2048`),
		badValue("bytes_in too large", "bytes_in", `99999999999999999999`),
		badValue("negative latency", "latency_ms", `-0.5`),
		badValue("negative amount", "amount", `-10`),
		badValue("data_class secret", "data_class", `"secret"`),
		badValue("data_class empty", "data_class", `""`),
		badValue("status fine", "status", `"fine"`),
		badValue("auth kerberos", "auth", `"kerberos"`),
		invalidCase{"empty event_id", obj(with(min, "event_id", `""`)), "event_id", ReasonBadID, `field "event_id": must not be empty`},
		invalidCase{"empty agent_id", obj(with(min, "agent_id", `""`)), "agent_id", ReasonBadID, ""},
		invalidCase{"empty target_id", obj(with(min, "target_id", `""`)), "target_id", ReasonBadID, ""},
		badValue("empty action", "action", `""`),
		badValue("empty decision", "decision", `""`),
		badValue("empty ts", "ts", `""`),
		badValue("string over 1024 bytes", "resource", `"`+strings.Repeat("r", 1025)+`"`),
		invalidCase{"value error message", obj(with(min, "decision", `"maybe"`)), "decision", ReasonBadValue, `field "decision": want "allow" or "deny"`},

		badTS(`"2026-13-01T00:00:00Z"`),
		badTS(`"2026-00-01T00:00:00Z"`),
		badTS(`"2026-02-30T00:00:00Z"`),
		badTS(`"2027-02-29T00:00:00Z"`),
		badTS(`"2100-02-29T00:00:00Z"`),
		badTS(`"2026-04-31T00:00:00Z"`),
		badTS(`"2026-03-02T24:00:00Z"`),
		badTS(`"2026-03-02T09:60:00Z"`),
		badTS(`"2026-03-02T09:15:61Z"`),
		badTS(`"yesterday"`),
		badTS(`"2026-03-02T09:15:03"`),
		badTS(`"2026-03-02T09:15:03.123"`),
		badTS(`"2026-03-02 09:15:03Z"`),
		badTS(`"2026-03-02T09:15:03.Z"`),
		badTS(`"2026-03-02T09:15:03+01"`),
		badTS(`"2026-03-02T09:15:03+0100"`),
		badTS(`"2026-03-02T09:15:03+24:00"`),
		badTS(`"2026-03-02T09:15:03+01:60"`),
		badTS(`"2026-03-02T09:15:03Z "`),
		badTS(`"2026-3-2T9:15:03Z"`),
		badTS(`"+2026-03-02T09:15:03Z"`),
		badTS(`"1772442903"`),

		absurdTS(`"1970-01-01T00:00:00Z"`),
		absurdTS(`"2300-01-01T00:00:00Z"`),
		absurdTS(`"1999-12-31T23:59:59.999999999Z"`),
		absurdTS(`"2200-01-01T00:00:00Z"`),
		absurdTS(`"2000-01-01T00:30:00+01:00"`),

		badJSON("empty input", ``),
		badJSON("only whitespace", " \n\t"),
		badJSON("truncated after brace", `{`),
		badJSON("truncated in key", full[:10]),
		badJSON("truncated in value", full[:60]),
		badJSON("truncated before closing brace", full[:len(full)-1]),
		badJSON("truncated in number", `{"event_id":"e","bytes_in":`),
		badJSON("trailing garbage", full+` x`),
		badJSON("two objects", full+full),
		badJSON("trailing comma", obj(min)[:len(obj(min))-1]+`,}`),
		badJSON("missing comma", `{"event_id":"e" "ts":"2026-03-02T09:15:03Z"}`),
		badJSON("missing colon", `{"event_id" "e"}`),
		badJSON("single quotes", `{'event_id':'e'}`),
		badJSON("unquoted key", `{event_id:"e"}`),
		badJSON("array", `[`+full+`]`),
		badJSON("string", `"event"`),
		badJSON("null", `null`),
		badJSON("number", `42`),
		badJSON("raw tab in string", obj(with(min, "action", "\"a\tb\""))),
		badJSON("raw newline in string", obj(with(min, "resource", "\"a\nb\""))),
		badJSON("raw newline in escaped string", obj(with(min, "resource", "\"\\u00e9\nb\""))),
		badJSON("control char in key", `{"ev`+"\x01"+`":1}`),
		badJSON("bad escape", obj(with(min, "action", `"a\xb"`))),
		badJSON("bad unicode escape", obj(with(min, "action", `"\u12G4"`))),
		badJSON("short unicode escape", obj(with(min, "action", `"\u12"`))),
		badJSON("unterminated string", `{"event_id":"e`),
		badJSON("unterminated escape", `{"event_id":"e\`),
		badJSON("nested too deep in unknown field", obj(with(min, "x", deepJSON(40)))),
		badJSON("bad literal in unknown field", obj(with(min, "x", `tru`))),
		badJSON("bad literal attested", obj(with(min, "attested", `ture`))),
		badJSON("NaN", obj(with(min, "latency_ms", `NaN`))),
		badJSON("lone minus", obj(with(min, "x", `-`))),
		badJSON("two dots", obj(with(min, "x", `1.2.3`))),
		badJSON("trailing comma in unknown array", obj(with(min, "x", `[1,]`))),
		badJSON("trailing comma in unknown object", obj(with(min, "x", `{"a":1,}`))),
		invalidCase{"syntax error message names the offset", `{"event_id" 1}`, "", ReasonBadJSON, `malformed JSON: expected ':' at byte 12`},

		invalidCase{"too large", obj(with(min, "x", `"`+strings.Repeat("a", MaxEventSize)+`"`)), "", ReasonTooLarge, ""},
	)
	return cs
}

func TestDecodeInvalid(t *testing.T) {
	for _, tc := range invalidDecodeCases() {
		t.Run(tc.name, func(t *testing.T) {
			var d Decoder
			var e Event
			err := d.Decode([]byte(tc.in), &e)
			if err == nil {
				t.Fatalf("Decode(%.200s) = nil, want %s error on %q", tc.in, tc.reason, tc.field)
			}
			checkFieldError(t, err, tc.field, tc.reason, tc.msg)
		})
	}
}

func checkFieldError(t *testing.T, err error, field string, reason Reason, msg string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("errors.Is(%v, ErrInvalidEvent) = false", err)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("errors.As(%v, *FieldError) = false", err)
	}
	if fe.Field != field || fe.Reason != reason {
		t.Errorf("error %q: field %q reason %s, want field %q reason %s", err, fe.Field, fe.Reason, field, reason)
	}
	if msg != "" && err.Error() != msg {
		t.Errorf("error = %q, want %q", err, msg)
	}
	if reason == ReasonBadJSON && !strings.HasPrefix(err.Error(), "malformed JSON: ") {
		t.Errorf("syntax error %q does not start with %q", err, "malformed JSON: ")
	}
}

func TestDecodeMaxEventSize(t *testing.T) {
	min := obj(minimalFields())
	pad := MaxEventSize - len(min) - len(`,"x":""`)
	in := obj(with(minimalFields(), "x", `"`+strings.Repeat("a", pad)+`"`))
	if len(in) != MaxEventSize {
		t.Fatalf("test bug: built %d bytes", len(in))
	}
	var d Decoder
	var e Event
	if err := d.Decode([]byte(in), &e); err != nil {
		t.Fatalf("event of exactly MaxEventSize bytes: %v", err)
	}
	err := d.Decode([]byte(in+" "), &e)
	checkFieldError(t, err, "", ReasonTooLarge, fmt.Sprintf("event of %d bytes exceeds the %d byte limit at byte 0", MaxEventSize+1, MaxEventSize))
}

func TestDecodeErrorWrapping(t *testing.T) {
	var d Decoder
	var e Event
	err := d.Decode([]byte(obj(without(minimalFields(), "action"))), &e)
	wrapped := fmt.Errorf("partition 3 offset 42: %w", err)
	if !errors.Is(wrapped, ErrInvalidEvent) {
		t.Errorf("errors.Is(wrapped, ErrInvalidEvent) = false")
	}
	var fe *FieldError
	if !errors.As(wrapped, &fe) || fe.Field != "action" || fe.Reason != ReasonMissingField {
		t.Errorf("errors.As(wrapped) = %v, %+v", errors.As(wrapped, &fe), fe)
	}
	if errors.Is(wrapped, errors.New("invalid event")) {
		t.Errorf("errors.Is matched a different error with the same text")
	}
}

// TestDecodeReuse decodes several events with one Decoder and one Event: each
// result must be exactly what a fresh Decoder gives, whatever came before
// (escaped strings in scratch, a smaller scratch buffer, an error, a full
// event whose optional fields must not leak into the next one).
func TestDecodeReuse(t *testing.T) {
	escaped := obj(with(with(with(with(minimalFields(),
		"agent_id", `"spiffe:\/\/bank.example\/agent\/caf\u00e9-07"`),
		`x\u005fkey`, `"unknown \"escaped\" value that also lands in scratch"`),
		"target_id", `"tool:\ud83d\ude80 launch"`),
		"action", `"say \"hi\"\tnow"`))
	bigger := obj(with(with(fullFields(),
		"resource", `"`+strings.Repeat(`\u00e9x`, 300)+`"`),
		"event_id", `"id-\"2\""`))
	seq := []string{
		obj(minimalFields()),
		escaped,
		obj(fullFields()),
		obj(minimalFields()),
		`{"event_id":"bad`,
		bigger,
		escaped,
		obj(without(fullFields(), "ts")),
		obj(with(fullFields(), "action", `"\u0041\u0042"`)),
		obj(minimalFields()),
	}
	var d Decoder
	var e Event
	for i, in := range seq {
		var fd Decoder
		var fe Event
		wantErr := fd.Decode([]byte(in), &fe)
		want := flatten(&fe)
		err := d.Decode([]byte(in), &e)
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("event %d: err %v, fresh decoder says %v", i, err, wantErr)
		}
		if err != nil {
			continue
		}
		if got := flatten(&e); got != want {
			t.Errorf("event %d after %d others differs from a fresh decode:\n%s", i, i, got.diff(want))
		}
	}
	// Spot-check the escaped event's views after decoding it again last.
	if err := d.Decode([]byte(escaped), &e); err != nil {
		t.Fatal(err)
	}
	if got := string(e.AgentID); got != "spiffe://bank.example/agent/café-07" {
		t.Errorf("AgentID = %q", got)
	}
	if got := string(e.TargetID); got != "tool:🚀 launch" {
		t.Errorf("TargetID = %q", got)
	}
	if got := string(e.Action); got != "say \"hi\"\tnow" {
		t.Errorf("Action = %q", got)
	}
}

// TestDecodeViewsIntoInput: unescaped strings are views into the input, so
// they stay valid as long as the input does, even across later Decode calls.
func TestDecodeViewsIntoInput(t *testing.T) {
	in := []byte(obj(with(minimalFields(), "action", `"a\"b"`)))
	var d Decoder
	var e Event
	if err := d.Decode(in, &e); err != nil {
		t.Fatal(err)
	}
	if &e.AgentID[0] != &in[strings.Index(string(in), "agent-1")] {
		t.Errorf("AgentID is not a view into the input")
	}
	agent := e.AgentID
	if err := d.Decode([]byte(obj(with(minimalFields(), "action", `"x\"y"`))), &e); err != nil {
		t.Fatal(err)
	}
	if string(agent) != "agent-1" {
		t.Errorf("view into the first input changed: %q", agent)
	}
}

// TestDecodeNumberOutOfRange: a number that overflows float64 is rejected
// (encoding/json cannot represent it either), whatever the field.
func TestDecodeNumberOutOfRange(t *testing.T) {
	for _, k := range []string{"latency_ms", "amount", "bytes_in", "x"} {
		t.Run(k, func(t *testing.T) {
			var d Decoder
			var e Event
			err := d.Decode([]byte(obj(with(minimalFields(), k, "1e400"))), &e)
			if !errors.Is(err, ErrInvalidEvent) {
				t.Errorf("Decode(%s: 1e400) = %v, want an ErrInvalidEvent", k, err)
			}
		})
	}
}

// TestDecodeIntoDirtyEvent: Decode resets every field, so optional fields of a
// previous event never leak into the next.
func TestDecodeIntoDirtyEvent(t *testing.T) {
	var d Decoder
	e := Event{Amount: 7, HasSig: true, Attested: AttestTrue, DataClass: DataRestricted, BytesIn: 3, LatencyMS: 9, HasLatency: true}
	if err := d.Decode([]byte(obj(fullFields())), &e); err != nil {
		t.Fatal(err)
	}
	if err := d.Decode([]byte(obj(minimalFields())), &e); err != nil {
		t.Fatal(err)
	}
	if got, want := flatten(&e), minimalWant(); got != want {
		t.Errorf("minimal event after a full one:\n%s", got.diff(want))
	}
}

// TestDecodeMatchesEncodingJSON decodes valid events with Decode and with
// encoding/json and compares every field.
func TestDecodeMatchesEncodingJSON(t *testing.T) {
	for _, tc := range validDecodeCases() {
		t.Run(tc.name, func(t *testing.T) {
			var d Decoder
			var e Event
			if err := d.Decode([]byte(tc.in), &e); err != nil {
				t.Fatal(err)
			}
			r, err := refDecode([]byte(tc.in))
			if err != nil {
				t.Fatalf("encoding/json: %v", err)
			}
			got := flatten(&e)
			if !r.tsOK {
				// time.Parse rejects leap seconds and lower-case t/z, which
				// RFC 3339 allows; the table pins those instants.
				r.f.TS = got.TS
			}
			if got != r.f {
				t.Errorf("Decode vs encoding/json:\n%s", got.diff(r.f))
			}
		})
	}
}

// TestDecodeAllocs: decoding a typical event allocates nothing once the
// decoder is warm, with or without escapes, exponents and unknown fields.
func TestDecodeAllocs(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"typical", typicalEvent},
		{"escapes", []byte(obj(with(with(fullFields(), "agent_id", `"caf\u00e9\ud83d\ude80"`), "action", `"say \"hi\""`)))},
		{"unknown fields and exponents", []byte(obj(append(with(fullFields(), "bytes_in", "1e3"),
			kv{"x", `{"a":[1.5e-3,-2,true,null,"\u00e9"]}`}, kv{"amount2", "1.234567890123456789"})))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d Decoder
			var e Event
			if err := d.Decode(tc.in, &e); err != nil {
				t.Fatal(err)
			}
			allocs := testing.AllocsPerRun(200, func() {
				if err := d.Decode(tc.in, &e); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("Decode allocates %v times per event, want 0", allocs)
			}
		})
	}
}

// TestParseRFC3339 pins the parser on its own, including what Decode would
// reject as out of range.
func TestParseRFC3339(t *testing.T) {
	tests := []struct {
		in   string
		want string // RFC 3339 of the expected instant; "" for not ok
	}{
		{"2026-03-02T09:15:03Z", "2026-03-02T09:15:03Z"},
		{"2026-03-02T09:15:03.1Z", "2026-03-02T09:15:03.1Z"},
		{"2026-03-02T09:15:03.000000001Z", "2026-03-02T09:15:03.000000001Z"},
		{"2026-03-02T09:15:03.0000000019Z", "2026-03-02T09:15:03.000000001Z"},
		{"2026-03-02T09:15:03+00:00", "2026-03-02T09:15:03Z"},
		{"2026-03-02T09:15:03-00:00", "2026-03-02T09:15:03Z"},
		{"2026-03-02T00:15:03+23:59", "2026-03-01T00:16:03Z"},
		{"2026-03-02T23:15:03-23:59", "2026-03-03T23:14:03Z"},
		{"1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"},
		{"1969-12-31T23:59:59.999999999Z", "1969-12-31T23:59:59.999999999Z"},
		{"1900-03-01T00:00:00Z", "1900-03-01T00:00:00Z"},
		{"2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"},
		{"2262-04-11T23:47:16.854775807Z", "2262-04-11T23:47:16.854775807Z"},
		{"1677-09-21T00:12:43.145224192Z", "1677-09-21T00:12:43.145224192Z"},
		{"2026-02-29T00:00:00Z", ""},
		{"2026-03-02T09:15:03", ""},
		{"2026-03-02T09:15:03.", ""},
		{"2026-03-02T09:15:03.Z", ""},
		{"2026-03-02T09:15:03ZZ", ""},
		{"2026-03-02T09:15:03+01:00Z", ""},
		{"2026-03-02T09:15:03+1:00", ""},
		{"2026-03-02T09:15:03+01:0a", ""},
		{"2026-03-02X09:15:03Z", ""},
		{"2026/03/02T09:15:03Z", ""},
		{"2026-03-02T09-15-03Z", ""},
		{"202a-03-02T09:15:03Z", ""},
		{"", ""},
		{"2026-03-02T09:15:0", ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := ParseRFC3339([]byte(tc.in))
			if tc.want == "" {
				if ok {
					t.Errorf("ParseRFC3339(%q) = %s, true; want false", tc.in, time.Unix(0, got).UTC().Format(time.RFC3339Nano))
				}
				return
			}
			w, err := time.Parse(time.RFC3339Nano, tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if !ok || got != w.UnixNano() {
				t.Errorf("ParseRFC3339(%q) = %s, %v; want %s", tc.in, time.Unix(0, got).UTC().Format(time.RFC3339Nano), ok, tc.want)
			}
		})
	}
}

// TestParseRFC3339Allocs: the parser never allocates.
func TestParseRFC3339Allocs(t *testing.T) {
	b := []byte("2026-03-02T10:15:03.123456+01:00")
	if a := testing.AllocsPerRun(100, func() { ParseRFC3339(b) }); a != 0 {
		t.Errorf("ParseRFC3339 allocates %v times", a)
	}
}

// The tests below pin bugs found while writing these tests. They are reported
// and skipped until fixed (run with -knownbugs to see them fail).

// TestDecodeTimestampOutsideInt64 (bug ts-wrap): ParseRFC3339 computes
// seconds·1e9 in int64 without a range check, so a year whose Unix
// nanoseconds do not fit (before 1677-09-21 or after 2262-04-11) wraps around
// modulo 2^64 ns (≈584.9 years) — and years 1415–1614 and 2585–2784 land inside
// the accepted 2000–2199 range, so Decode accepts an absurd timestamp as a
// plausible one.
func TestDecodeTimestampOutsideInt64(t *testing.T) {
	for _, ts := range []string{
		"2600-01-01T00:00:00Z", // decoded as 2015-06-13T00:25:26Z
		"1500-01-01T00:00:00Z", // decoded as 2084-07-20T23:34:33Z
		"2784-06-01T00:00:00Z",
		"1415-06-01T00:00:00Z",
		"9999-12-31T23:59:59Z",
		"0001-01-01T00:00:00Z",
		"0000-01-01T00:00:00Z",
	} {
		t.Run(ts, func(t *testing.T) {
			var d Decoder
			var e Event
			err := d.Decode([]byte(obj(with(minimalFields(), "ts", `"`+ts+`"`))), &e)
			if err == nil {
				t.Fatalf("Decode accepted ts %s as %s", ts, time.Unix(0, e.TS).UTC().Format(time.RFC3339Nano))
			}
			checkFieldError(t, err, "ts", ReasonBadTimestamp, "")
		})
	}
	t.Run("ParseRFC3339", func(t *testing.T) {
		if got, ok := ParseRFC3339([]byte("2600-01-01T00:00:00Z")); ok {
			t.Fatalf("ParseRFC3339(2600-01-01T00:00:00Z) = %s, true; want false (not representable in int64 ns)",
				time.Unix(0, got).UTC().Format(time.RFC3339Nano))
		}
	})
}

// TestDecodeRejectsNonJSONNumbers (bug lenient-numbers): the number scanner
// accepts any run of digits, '.', 'e', '+', '-' that strconv.ParseFloat
// accepts, which includes spellings JSON (RFC 8259 §6) forbids, so invalid
// JSON is accepted instead of going to the dead-letter topic as bad_json.
func TestDecodeRejectsNonJSONNumbers(t *testing.T) {
	for _, tc := range []struct{ k, v string }{
		{"x", "01"},
		{"x", "1."},
		{"x", "-.5"},
		{"x", "1.e5"},
		{"x", "-01.5"},
		{"bytes_in", "007"},
		{"bytes_out", "00"},
		{"latency_ms", "1."},
		{"amount", "01.50"},
	} {
		t.Run(tc.k+"="+tc.v, func(t *testing.T) {
			in := obj(with(minimalFields(), tc.k, tc.v))
			if json.Valid([]byte(in)) {
				t.Fatalf("test bug: %s is valid JSON", in)
			}
			var d Decoder
			var e Event
			err := d.Decode([]byte(in), &e)
			if err == nil {
				t.Fatalf("Decode accepted the invalid JSON number %s in %q", tc.v, tc.k)
			}
			if !errors.Is(err, ErrInvalidEvent) {
				t.Errorf("err = %v", err)
			}
		})
	}
}

// TestDecodeInvalidUTF8 (bug utf8): contract v1 events are UTF-8, but Decode
// passes invalid UTF-8 bytes through into the id fields. encoding/json (used
// by the sinks to write alerts) turns each into U+FFFD, so distinct raw ids
// can print as the same id. Either rejecting such input or replacing the bytes
// as encoding/json does would be fine.
func TestDecodeInvalidUTF8(t *testing.T) {
	for _, s := range []string{"agent-\xff", "agent-\xc3", "agent-\xed\xa0\x80", "\xc0\xaf"} {
		t.Run(fmt.Sprintf("%q", s), func(t *testing.T) {
			in := obj(with(minimalFields(), "agent_id", `"`+s+`"`))
			var d Decoder
			var e Event
			err := d.Decode([]byte(in), &e)
			if err != nil {
				if !errors.Is(err, ErrInvalidEvent) {
					t.Errorf("err = %v", err)
				}
				return
			}
			if !utf8.Valid(e.AgentID) {
				t.Fatalf("Decode returned agent_id %q, not valid UTF-8", e.AgentID)
			}
		})
	}
}

// TestDecodeDuplicateKeys (issue 12 item 5): a contract field twice, or
// under a spelling encoding/json matches to it, is rejected whatever the
// values: before, the last member won (and for data_class, status, auth and
// attested a later null kept the earlier value), while other JSON readers
// take the first, and encoding/json decoding into a struct takes
// "AGENT_ID" for agent_id — a reader downstream saw another agent than the
// one vigil scored.
func TestDecodeDuplicateKeys(t *testing.T) {
	for _, tc := range []struct{ k, v, k2, v2 string }{
		{"agent_id", `"agent-2"`, "agent_id", `"agent-3"`},
		{"agent_id", `"agent-2"`, "AGENT_ID", `"agent-3"`},
		{"agent_id", `"agent-2"`, "agent_ID", `"agent-3"`},
		{"event_id", `"e"`, "event_id", `"e"`},
		{"ts", `"2026-03-02T09:15:03Z"`, "t\u017f", `"2030-01-01T00:00:00Z"`}, // ſ folds to s
		{"sig_key", `"k1"`, "sig_Key", `"k2"`},                                // Kelvin sign folds to k
		{"decision", `"allow"`, "Decision", `"deny"`},
		{"target_id", `"t"`, "target_id", `"t2"`},
		{"bytes_in", "5", "bytes_in", "null"}, {"latency_ms", "5", "latency_ms", "7"}, {"amount", "5", "amount", "null"},
		{"resource", `"r"`, "resource", "null"}, {"sig", `"s"`, "sig", `"t"`},
		{"data_class", `"public"`, "data_class", "null"}, {"status", `"ok"`, "status", "null"},
		{"auth", `"mtls"`, "auth", "null"}, {"attested", "true", "attested", "null"},
		{"workload_version", `"v1"`, "workload_version", `"v2"`},
	} {
		t.Run(tc.k2, func(t *testing.T) {
			in := obj(append(without(minimalFields(), tc.k), kv{tc.k, tc.v}, kv{tc.k2, tc.v2}))
			var d Decoder
			var e Event
			checkFieldError(t, d.Decode([]byte(in), &e), tc.k, ReasonDuplicateKey, "")
		})
	}
	// What the rejection prevents: encoding/json into a struct reads the
	// other spelling as agent_id.
	var ref struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal([]byte(`{"agent_id":"a","AGENT_ID":"b"}`), &ref); err != nil || ref.AgentID != "b" {
		t.Logf("encoding/json no longer folds case: %q, %v", ref.AgentID, err)
	}
}

// TestDaysFromCivil compares the calendar arithmetic with package time for
// every year ParseRFC3339 can read. Year 0000 January and February are one
// day off (bug civil-year0: era := y / 400 truncates toward zero where the
// algorithm needs floor division once y-- makes y negative). Unreachable
// through Decode today, and hidden by ts-wrap in ParseRFC3339, but a fix of
// ts-wrap that widens the representable range would expose it.
func TestDaysFromCivil(t *testing.T) {
	check := func(y int) (msg string) {
		for _, md := range [][2]int{{1, 1}, {2, 28}, {2, 29}, {3, 1}, {12, 31}} {
			if md[1] == 29 && daysIn(y, 2) != 29 {
				continue
			}
			want := time.Date(y, time.Month(md[0]), md[1], 0, 0, 0, 0, time.UTC).Unix() / 86400
			if got := daysFromCivil(y, md[0], md[1]); got != want {
				return fmt.Sprintf("daysFromCivil(%04d-%02d-%02d) = %d, want %d", y, md[0], md[1], got, want)
			}
		}
		return ""
	}
	for y := 1; y <= 9999; y++ {
		if msg := check(y); msg != "" {
			t.Fatal(msg)
		}
	}
	if msg := check(0); msg != "" {
		t.Fatalf("%s", msg)
	}
}

// TestDecodeBadID (issue 17 item 4): identity fields with characters that
// make distinct ids print alike — controls, zero-width and bidi format
// characters, separators, white space at either end, U+FFFD — or longer than
// MaxIDLen are rejected with ReasonBadID naming the field, whether the
// character is written raw or as a \u escape.
func TestDecodeBadID(t *testing.T) {
	// raw: the character written as itself ("" where JSON does not allow
	// that: raw controls below U+0020 are malformed JSON, bad_json).
	bad := []struct{ name, raw, esc string }{
		{"NUL", "", `\u0000`},
		{"tab", "", `\t`},
		{"newline", "", `\n`},
		{"escape", "", `\u001b`},
		{"DEL", "\x7f", `\u007f`},
		{"C1 NEL", "\u0085", `\u0085`},
		{"C1 CSI", "\u009b", `\u009B`},
		{"soft hyphen", "\u00ad", `\u00ad`},
		{"Arabic letter mark", "\u061c", `\u061c`},
		{"zero-width space", "\u200b", `\u200b`},
		{"zero-width non-joiner", "\u200c", `\u200c`},
		{"zero-width joiner", "\u200d", `\u200d`},
		{"left-to-right mark", "\u200e", `\u200e`},
		{"right-to-left mark", "\u200f", `\u200f`},
		{"LRE", "\u202a", `\u202a`},
		{"RLO", "\u202e", `\u202E`},
		{"word joiner", "\u2060", `\u2060`},
		{"LRI", "\u2066", `\u2066`},
		{"PDI", "\u2069", `\u2069`},
		{"BOM", "\ufeff", `\ufeff`},
		{"interlinear annotation", "\ufff9", `\ufff9`},
		{"tag A", "\U000E0041", `\udb40\udc41`},
		{"line separator", "\u2028", `\u2028`},
		{"paragraph separator", "\u2029", `\u2029`},
		{"replacement character", "\ufffd", `\ufffd`},
		{"lone surrogate", "", `\ud800`},
	}
	edge := []struct{ name, v string }{
		{"leading space", ` agent-1`},
		{"trailing space", `agent-1 `},
		{"only a space", ` `},
		{"leading no-break space", "\u00a0agent-1"},
		{"trailing ideographic space", "agent-1\u3000"},
		{"leading em space, escaped", `\u2003agent-1`},
		{"trailing space, escaped", `agent-1\u0020`},
		{"too long", strings.Repeat("a", MaxIDLen+1)},
		{"too long once unescaped", strings.Repeat("é", MaxIDLen/2) + "x"},
	}
	for _, field := range []string{"event_id", "agent_id", "agent_class", "target_id", "credential_id"} {
		check := func(t *testing.T, v string) {
			t.Helper()
			var d Decoder
			var e Event
			in := obj(with(fullFields(), field, `"`+v+`"`))
			err := d.Decode([]byte(in), &e)
			if err == nil {
				t.Fatalf("Decode accepted %s %q", field, v)
			}
			checkFieldError(t, err, field, ReasonBadID, "")
		}
		t.Run(field, func(t *testing.T) {
			for _, c := range bad {
				for _, at := range []struct{ name, pre, post string }{
					{"inside", "agent-", "-1"}, {"leading", "", "agent-1"}, {"trailing", "agent-1", ""},
				} {
					if c.raw != "" {
						t.Run(c.name+"/raw/"+at.name, func(t *testing.T) { check(t, at.pre+c.raw+at.post) })
					}
					t.Run(c.name+"/escaped/"+at.name, func(t *testing.T) { check(t, at.pre+c.esc+at.post) })
				}
			}
			for _, c := range edge {
				t.Run(c.name, func(t *testing.T) { check(t, c.v) })
			}
		})
	}

	// What stays valid: spaces inside, non-ASCII letters, marks and symbols,
	// and ids of exactly MaxIDLen bytes.
	for _, v := range []string{
		"payments bot 07", "café-bot", "e\u0301-combining", "東京-agent", "tool:🚀 launch", "a\u00a0b",
		strings.Repeat("a", MaxIDLen), strings.Repeat("é", MaxIDLen/2), "x",
	} {
		t.Run(fmt.Sprintf("valid %.40q", v), func(t *testing.T) {
			for _, field := range []string{"event_id", "agent_id", "agent_class", "target_id", "credential_id"} {
				var d Decoder
				var e Event
				if err := d.Decode([]byte(obj(with(fullFields(), field, `"`+v+`"`))), &e); err != nil {
					t.Errorf("%s %q: %v", field, v, err)
				}
			}
		})
	}
	// Invalid UTF-8 is malformed input wherever it is (bad_json); an empty
	// optional id is absent.
	t.Run("invalid UTF-8", func(t *testing.T) {
		var d Decoder
		var e Event
		err := d.Decode([]byte(obj(with(fullFields(), "agent_id", "\"agent-\xff\""))), &e)
		checkFieldError(t, err, "", ReasonBadJSON, "")
	})
	t.Run("empty optional ids are absent", func(t *testing.T) {
		var d Decoder
		var e Event
		if err := d.Decode([]byte(obj(append(minimalFields(), kv{"credential_id", `""`}, kv{"agent_class", `""`}))), &e); err != nil {
			t.Fatal(err)
		}
		if len(e.CredentialID) != 0 || len(e.AgentClass) != 0 {
			t.Errorf("credential_id %q agent_class %q", e.CredentialID, e.AgentClass)
		}
	})
	t.Run("message", func(t *testing.T) {
		var d Decoder
		var e Event
		err := d.Decode([]byte(obj(with(minimalFields(), "agent_id", `"bot-\u202e70-tob"`))), &e)
		checkFieldError(t, err, "agent_id", ReasonBadID, `field "agent_id": format character U+202E at byte 4`)
	})
}

// TestCheckIDWordAtATime: checkID's eight-bytes-at-a-time test agrees with
// a byte-by-byte one for every byte value at every position of ids of 1 to
// 17 bytes (whole words, a tail, both).
func TestCheckIDWordAtATime(t *testing.T) {
	for n := 1; n <= 17; n++ {
		for pos := 0; pos < n; pos++ {
			for c := 0; c < 256; c++ {
				s := make([]byte, n)
				for i := range s {
					s[i] = 'a'
				}
				s[pos] = byte(c)
				want := c >= 0x20 && c < 0x7f && !(c == ' ' && (pos == 0 || pos == n-1))
				if c >= 0x80 {
					want = false // a lone byte ≥ 0x80 is invalid UTF-8
				}
				if got := checkID(s) == ""; got != want {
					t.Fatalf("%q: got ok=%v", s, got)
				}
			}
		}
	}
}
