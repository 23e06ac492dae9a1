package features

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// Feature indexes a value in a Vector.
type Feature int

// The features of one agent window. Counts are raw; "share" features are
// binomial (Value = successes, Trials = events); "per event" features are
// means over the events that carried the field (Trials = how many did).
const (
	EventCount       Feature = iota // events in the window
	DistinctTargets                 // share of calls that reached another distinct target: (distinct−1)/(events−1)
	NewTargets                      // targets this agent had not used before
	NewActions                      // actions this agent had not used before
	NewCredentials                  // credential ids this agent had not used before
	NewSources                      // source addresses this agent had not used before
	NewToPeers                      // targets, actions, credentials or sources new to the whole peer group too
	ActionMix                       // Jensen–Shannon distance of the action mix from the agent's usual mix (filled by models)
	DenyRate                        // decision=deny
	ErrorRate                       // status error or timeout
	BytesOut                        // bytes_out per event
	BytesIn                         // bytes_in per event
	Latency                         // latency_ms per successful call (geometric mean)
	Amount                          // amount per money-moving event
	RestrictedShare                 // data_class=restricted
	WeakAuthShare                   // auth none/apikey, or attested=false
	DeniedUnfamiliar                // denied calls to a target or action the agent has never been allowed
	NewOriginShare                  // calls from a new origin (a credential and address new together, or a new network) beside established calls (see Origins)
	NumFeatures
)

var featureNames = [NumFeatures]string{
	"event_count", "distinct_target_share", "new_targets", "new_actions", "new_credentials",
	"new_src_addresses", "new_to_peer_group", "action_mix_jsd", "deny_rate", "error_rate",
	"bytes_out_per_event", "bytes_in_per_event", "latency_ms", "amount_per_event",
	"restricted_share", "weak_auth_share", "denied_unfamiliar", "new_origin_share",
}

func (f Feature) String() string {
	if f < 0 || f >= NumFeatures {
		return "unknown"
	}
	return featureNames[f]
}

// ActionBuckets is the resolution of the action-mix histogram: actions are
// hashed into this many buckets.
const ActionBuckets = 16

// Novelty flags returned by Observe.
const (
	NewTarget uint16 = 1 << iota
	NewAction
	NewCredential
	NewSource
	NewPeerItem   // at least one of the new items is new to the peer group too
	Unfamiliar    // a denied call to a target or action the agent has not been allowed (see Probes)
	NewPeerAccess // the target or the action is new to the peer group (NewPeerItem is set too)
	NewOrigin     // the call comes from a new origin, first seen between five minutes and a day ago (see Origins)
	KnownOrigin   // the call's credential, source address and network are known and are no new origin's
	NewNetwork    // the source address is in a network the agent had not called from before
)

// Probes remembers the last few targets and actions an agent was denied on
// its first attempt and has not been allowed since, so that repeated denied
// attempts at the same thing stay unfamiliar although the first one made it
// "seen". 16 bytes per agent; a fifth probed item pushes out the oldest.
//
// A denied first attempt is what privilege probing looks like (an agent
// trying what it was never granted); an agent's ordinary denials are of
// things it normally does (an expired grant, a policy being rolled out), and
// are counted by the deny rate.
type Probes [4]uint32

// check reports whether a call to target ft and action fa (fingerprints,
// from Observe) is a denied call to something the agent has never been
// allowed: new now (flags) or denied every time since its first attempt. An
// allowed call forgets its target and action.
func (pr *Probes) check(ft, fa uint32, denied bool, flags uint16) bool {
	if !denied && *pr == (Probes{}) {
		return false
	}
	ft, fa = ft|1, fa|1
	if !denied {
		for i, v := range pr {
			if v == ft || v == fa {
				pr[i] = 0
			}
		}
		return false
	}
	hit := flags&(NewTarget|NewAction) != 0
	for _, v := range pr {
		if v == ft || v == fa {
			hit = true
		}
	}
	if flags&NewAction != 0 {
		pr.put(fa)
	} else if flags&NewTarget != 0 {
		pr.put(ft)
	}
	return hit
}

func (pr *Probes) put(fp uint32) {
	for i, v := range pr {
		if v == fp {
			return
		}
		if v == 0 {
			pr[i] = fp
			return
		}
	}
	copy(pr[:], pr[1:])
	pr[len(pr)-1] = fp
}

// Origins remembers the agent's last few new origins, with when each was
// first seen (Unix seconds): a credential and a source address both new to
// the agent when first used together, or a network (see network) the agent
// had never called from. 16-bit fingerprints, 32 bytes per agent.
//
// A credential the agent has never used, presented from an address it has
// never called from, is what a stolen credential used from the thief's host
// looks like; the agent's own token replayed from a network it never used is
// the other half of that. A rotation brings a new credential from the
// agent's usual addresses, a restarted instance a new address in the usual
// network with the usual credential: neither is a new origin. First-seen
// features see a new origin once; Origins keeps flagging the calls that use
// any of its items for a day (NewOrigin), so that an intruder working
// alongside the real agent for hours stays visible as a share of its calls
// (NewOriginShare), and it tells the agent's established calls (KnownOrigin)
// from those, which an agent moved wholesale to new hosts and credentials
// no longer makes.
type Origins [4]uint64

// originAge is how long, in seconds, a new origin stays new; originGrace
// how long after its first call its calls are not yet counted (an agent
// moved wholesale switches over within minutes, see Window.Vector).
const (
	originAge   = 24 * 3600
	originGrace = 5 * 60
)

// check records a new origin when the call's credential and address are
// both new now, or its network is (flags), and classifies the call at ts
// (Unix nanoseconds) from its credential, address and network fingerprints
// c, a, n: NewOrigin when it uses an item of an origin recorded between
// originGrace and originAge before, KnownOrigin when its items are known and
// of no origin recorded within originAge, 0 otherwise (an item new now, or
// an origin within its grace).
func (o *Origins) check(c, a, n uint16, ts int64, flags uint16) uint16 {
	now := uint32(max(0, ts/1e9))
	c |= 1 // 0 marks a network entry
	if flags&NewCredential != 0 && flags&NewSource != 0 {
		o.put(c, a, now)
	}
	if flags&NewNetwork != 0 {
		o.put(0, n, now)
	}
	if flags&NewNetwork != 0 || flags&NewCredential != 0 && flags&NewSource != 0 {
		return 0
	}
	out := KnownOrigin
	if flags&(NewCredential|NewSource) != 0 {
		out = 0
	}
	for i, v := range o {
		ec, ea := uint16(v>>48), uint16(v>>32)
		if v == 0 || ec == 0 && ea != n || ec != 0 && ec != c && ea != a {
			continue
		}
		switch at := uint32(v); {
		case at <= now && now-at >= originAge:
			o[i] = 0 // no longer new
		case at > now || now-at < originGrace:
			return 0
		default:
			out = NewOrigin
		}
	}
	return out
}

// put records an origin first seen at now, replacing the oldest entry when
// full.
func (o *Origins) put(c, a uint16, now uint32) {
	old := 0
	for i, v := range o {
		if v == 0 {
			old = i
			break
		}
		if uint32(v) < uint32(o[old]) {
			old = i
		}
	}
	o[old] = uint64(c)<<48 | uint64(a)<<32 | uint64(now)
}

// network returns the part of a source address that names its network: the
// first two octets of an IPv4 address (its /16), the first three groups of
// an IPv6 one (its /48, or what precedes a "::" before them; an IPv4
// address written in IPv6 is its IPv4 network); false for
// anything else (a host name says nothing of where it is).
func network(addr []byte) ([]byte, bool) {
	dots, colons, hex := 0, 0, false
	end := -1
	for i, c := range addr {
		switch {
		case c == '.':
			if dots++; dots == 2 && end < 0 {
				end = i
			}
		case c == ':':
			if colons++; end < 0 && (colons == 3 || i > 0 && addr[i-1] == ':') {
				end = i
			}
		case '0' <= c && c <= '9':
		case 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F':
			hex = true
		default:
			return nil, false
		}
	}
	switch {
	case colons >= 2 && dots == 3: // IPv4 in IPv6: its IPv4 network
		return network(addr[bytes.LastIndexByte(addr, ':')+1:])
	case colons >= 2:
		if end < 0 {
			end = len(addr)
		}
		return addr[:end], true
	case colons == 0 && !hex && dots == 3:
		return addr[:end], true
	}
	return nil, false
}

// Hash seeds per item kind, so equal strings of different kinds differ.
const (
	seedTarget = 0x7a11 + iota
	seedAction
	seedCredential
	seedSource
	seedNetwork
)

// Observe checks the event's target, action, credential, source address and
// its network against the agent's and the peer group's seen sets (networks:
// the agent's only), records them, and returns novelty flags and the
// action's histogram bucket. With the agent's probes it also flags a denied
// call to something the agent has never been allowed (Unfamiliar), and with
// its origins a call from a new origin (NewOrigin) or an established one
// (KnownOrigin). peer, probes and origins may be nil (origins while the
// agent is too young for its own items to be anything but new).
func Observe(e *Event, agent, peer *SeenSet, probes *Probes, origins *Origins) (flags uint16, bucket int) {
	ah := Hash64(e.Action, seedAction)
	th := Hash64(e.TargetID, seedTarget)
	bucket = int(ah % ActionBuckets)
	flags |= observe(th, NewTarget, agent, peer)
	flags |= observe(ah, NewAction, agent, peer)
	if flags&NewPeerItem != 0 {
		flags |= NewPeerAccess
	}
	if probes != nil && probes.check(uint32(th>>32), uint32(ah>>32), e.Decision == Deny, flags) {
		flags |= Unfamiliar
	}
	var ch uint64
	if len(e.CredentialID) > 0 {
		ch = Hash64(e.CredentialID, seedCredential)
		flags |= observe(ch, NewCredential, agent, peer)
	}
	if len(e.SrcIP) == 0 {
		return flags, bucket
	}
	sh := Hash64(e.SrcIP, seedSource)
	flags |= observe(sh, NewSource, agent, peer)
	var nh uint64
	if n, ok := network(e.SrcIP); ok {
		// Only a new address can be in a new network; the networks of
		// known ones are recorded as they are used (after an upgrade from a
		// version that kept none, within minutes).
		nh = Hash64(n, seedNetwork)
		if agent.Observe(uint32(nh>>32)) && flags&NewSource != 0 {
			flags |= NewNetwork
		}
	}
	switch {
	case origins == nil:
	case *origins == (Origins{}) && flags&(NewCredential|NewSource|NewNetwork) == 0:
		flags |= KnownOrigin
	default:
		flags |= origins.check(uint16(ch>>16), uint16(sh>>16), uint16(nh>>16), e.TS, flags)
	}
	return flags, bucket
}

func observe(h uint64, flag uint16, agent, peer *SeenSet) uint16 {
	fp := uint32(h >> 32)
	if !agent.Observe(fp) {
		if peer != nil {
			peer.Observe(fp) // keep it fresh for the group
		}
		return 0
	}
	if peer != nil && peer.Observe(fp) {
		return flag | NewPeerItem
	}
	return flag
}

// Window accumulates one agent's events in one event-time window. Its size is
// fixed (about 170 bytes) whatever the traffic.
type Window struct {
	Index      int64 // window number: it covers [Index·size, (Index+1)·size)
	N          uint32
	Deny       uint32
	Errors     uint32
	Restricted uint32
	Weak       uint32
	WeakN      uint32 // events carrying auth or attested
	DataN      uint32 // events carrying data_class
	BytesOutN  uint32
	BytesInN   uint32
	LatencyN   uint32
	AmountN    uint32
	New        [5]uint16 // targets, actions, credentials, sources, new to peers
	Actions    [ActionBuckets]uint16
	BytesOut   float64
	BytesIn    float64
	Latency    float64 // sum of log1p(latency_ms)
	AmountSum  float64
	targets    [8]uint64 // 512-bit linear-counting bitmap of target hashes
	First      int64
	Last       int64
	Flags      uint8  // reserved for the runtime (e.g. which early alerts fired)
	Unfamiliar uint16 // denied calls flagged Unfamiliar (kept in the agent snapshot, version 3)
	// Calls carrying a source address, those of them flagged NewOrigin and
	// those flagged KnownOrigin (kept in the agent snapshot, version 4).
	OriginN, Origin, Known uint32
}

// Reset empties w and starts window idx.
func (w *Window) Reset(idx int64) { *w = Window{Index: idx} }

// Add accumulates e. flags and bucket come from Observe.
func (w *Window) Add(e *Event, flags uint16, bucket int) {
	if w.N == 0 || e.TS < w.First {
		w.First = e.TS
	}
	if e.TS > w.Last {
		w.Last = e.TS
	}
	w.N++
	if e.Decision == Deny {
		w.Deny++
	}
	if e.Status == StatusError || e.Status == StatusTimeout {
		w.Errors++
	}
	if e.DataClass != DataUnknown {
		w.DataN++
		if e.DataClass == DataRestricted {
			w.Restricted++
		}
	}
	if e.Auth != AuthUnknown || e.Attested != AttestUnknown {
		w.WeakN++
		if e.Auth == AuthNone || e.Auth == AuthAPIKey || e.Attested == AttestFalse {
			w.Weak++
		}
	}
	if e.BytesOut >= 0 {
		w.BytesOut += float64(e.BytesOut)
		w.BytesOutN++
	}
	if e.BytesIn >= 0 {
		w.BytesIn += float64(e.BytesIn)
		w.BytesInN++
	}
	// Latency of failed calls says little (timeouts sit at the client's
	// limit), and errors have their own feature.
	if e.HasLatency && (e.Status == StatusOK || e.Status == StatusUnknown) {
		w.Latency += math.Log1p(e.LatencyMS)
		w.LatencyN++
	}
	if e.Amount > 0 {
		w.AmountSum += e.Amount
		w.AmountN++
	}
	if len(e.SrcIP) > 0 {
		w.OriginN++
		if flags&NewOrigin != 0 {
			w.Origin++
		}
		if flags&KnownOrigin != 0 {
			w.Known++
		}
	}
	if flags != 0 {
		if flags&Unfamiliar != 0 && w.Unfamiliar < math.MaxUint16 {
			w.Unfamiliar++
		}
		for i := range 5 {
			if flags&(1<<i) != 0 && w.New[i] < math.MaxUint16 {
				w.New[i]++
			}
		}
	}
	if w.Actions[bucket] < math.MaxUint16 {
		w.Actions[bucket]++
	}
	th := Hash64(e.TargetID, seedTarget)
	w.targets[(th>>6)&7] |= 1 << (th & 63)
}

// DistinctTargets estimates the distinct targets seen by linear counting over
// 512 bits (exact in expectation, a few percent error up to a few hundred,
// saturating near 3,200).
func (w *Window) DistinctTargets() float64 {
	zeros := 0
	for _, b := range w.targets {
		zeros += 64 - bits.OnesCount64(b)
	}
	const m = 512
	if zeros == 0 {
		zeros = 1
	}
	return -m * math.Log(float64(zeros)/m)
}

// Vector is the feature vector of one closed (or, for early decisions,
// partial) agent window.
type Vector struct {
	Index      int64 // window number
	Start, End int64 // Unix nanoseconds
	HourOfWeek int   // 0 = Monday 00:00 UTC … 167, of the window start
	Value      [NumFeatures]float64
	Trials     [NumFeatures]float64 // binomial trials, or events carrying a per-event field
	Actions    [ActionBuckets]uint16
}

// Vector computes the feature vector of w for a window of the given size.
func (w *Window) Vector(size int64) Vector {
	v := Vector{Index: w.Index, Start: w.Index * size, End: (w.Index + 1) * size, Actions: w.Actions}
	v.HourOfWeek = HourOfWeek(v.Start)
	n := float64(w.N)
	v.Value[EventCount] = n
	if w.N > 1 {
		d := math.Min(math.Max(math.Round(w.DistinctTargets()), 1), n)
		v.Value[DistinctTargets], v.Trials[DistinctTargets] = d-1, n-1
	}
	v.Value[NewTargets] = float64(w.New[0])
	v.Value[NewActions] = float64(w.New[1])
	v.Value[NewCredentials] = float64(w.New[2])
	v.Value[NewSources] = float64(w.New[3])
	v.Value[NewToPeers] = float64(w.New[4])
	v.Value[DeniedUnfamiliar] = float64(w.Unfamiliar)
	v.Value[DenyRate], v.Trials[DenyRate] = float64(w.Deny), n
	v.Value[ErrorRate], v.Trials[ErrorRate] = float64(w.Errors), n
	v.Value[RestrictedShare], v.Trials[RestrictedShare] = float64(w.Restricted), float64(w.DataN)
	v.Value[WeakAuthShare], v.Trials[WeakAuthShare] = float64(w.Weak), float64(w.WeakN)
	// New origins count beside known ones: an intruder works alongside the
	// agent, while an agent moved wholesale to new hosts and credentials
	// leaves nothing known behind (nor does one whose only calls are the
	// intruder's).
	if w.Known > 0 {
		v.Value[NewOriginShare] = float64(w.Origin)
	}
	v.Trials[NewOriginShare] = float64(w.OriginN)
	mean := func(sum float64, k uint32) float64 {
		if k == 0 {
			return 0
		}
		return sum / float64(k)
	}
	v.Value[BytesOut], v.Trials[BytesOut] = mean(w.BytesOut, w.BytesOutN), float64(w.BytesOutN)
	v.Value[BytesIn], v.Trials[BytesIn] = mean(w.BytesIn, w.BytesInN), float64(w.BytesInN)
	v.Value[Latency], v.Trials[Latency] = math.Expm1(mean(w.Latency, w.LatencyN)), float64(w.LatencyN)
	v.Value[Amount], v.Trials[Amount] = mean(w.AmountSum, w.AmountN), float64(w.AmountN)
	return v
}

// HourOfWeek returns the UTC hour of the week of a Unix-nanosecond time,
// Monday 00:00 = 0.
func HourOfWeek(ts int64) int {
	const hour = int64(3600e9)
	h := floorDiv(ts, hour)
	// 1970-01-01 was a Thursday: hour 0 of the epoch is hour 72 of its week.
	return int(((h+72)%168 + 168) % 168)
}

// WindowIndex returns the number of the size-long window holding ts.
func WindowIndex(ts, size int64) int64 { return floorDiv(ts, size) }

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// DeriveClass returns the peer group for an agent without agent_class: the
// last path segment of the id with a trailing "-NN" (or "_NN" or digits)
// removed, e.g. "spiffe://bank.example/agent/payments-bot-07" → "payments-bot".
// The result is appended to dst.
func DeriveClass(dst, agentID []byte) []byte {
	s := agentID
	if i := bytes.LastIndexByte(s, '/'); i >= 0 && i+1 < len(s) {
		s = s[i+1:]
	}
	j := len(s)
	for j > 0 && s[j-1] >= '0' && s[j-1] <= '9' {
		j--
	}
	if j < len(s) && j > 0 && (s[j-1] == '-' || s[j-1] == '_' || s[j-1] == '.') {
		j--
	}
	if j == 0 {
		j = len(s)
	}
	return append(dst, s[:j]...)
}

// AppendBinary appends w's state (fixed layout, about 230 bytes).
func (w *Window) AppendBinary(dst []byte) []byte {
	le := binary.LittleEndian
	dst = le.AppendUint64(dst, uint64(w.Index))
	for _, v := range [...]uint32{w.N, w.Deny, w.Errors, w.Restricted, w.Weak, w.WeakN, w.DataN, w.BytesOutN, w.BytesInN, w.LatencyN, w.AmountN} {
		dst = le.AppendUint32(dst, v)
	}
	for _, v := range w.New {
		dst = le.AppendUint16(dst, v)
	}
	for _, v := range w.Actions {
		dst = le.AppendUint16(dst, v)
	}
	for _, v := range [...]float64{w.BytesOut, w.BytesIn, w.Latency, w.AmountSum} {
		dst = le.AppendUint64(dst, math.Float64bits(v))
	}
	for _, v := range w.targets {
		dst = le.AppendUint64(dst, v)
	}
	dst = le.AppendUint64(dst, uint64(w.First))
	dst = le.AppendUint64(dst, uint64(w.Last))
	return append(dst, w.Flags)
}

// windowSnapshotSize is the length of AppendBinary's output.
const windowSnapshotSize = 8 + 11*4 + 5*2 + ActionBuckets*2 + 4*8 + 8*8 + 2*8 + 1

// ErrWindowSnapshot is wrapped by Window.DecodeFrom's errors.
var ErrWindowSnapshot = errors.New("bad window snapshot")

// DecodeFrom restores w from the start of data and returns the bytes used.
func (w *Window) DecodeFrom(data []byte) (int, error) {
	if len(data) < windowSnapshotSize {
		return 0, fmt.Errorf("%w: %d bytes, want %d", ErrWindowSnapshot, len(data), windowSnapshotSize)
	}
	le := binary.LittleEndian
	off := 0
	u64 := func() uint64 { v := le.Uint64(data[off:]); off += 8; return v }
	u32 := func() uint32 { v := le.Uint32(data[off:]); off += 4; return v }
	u16 := func() uint16 { v := le.Uint16(data[off:]); off += 2; return v }
	f64 := func() float64 {
		f := math.Float64frombits(u64())
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0
		}
		return f
	}
	w.Index = int64(u64())
	for _, p := range [...]*uint32{&w.N, &w.Deny, &w.Errors, &w.Restricted, &w.Weak, &w.WeakN, &w.DataN, &w.BytesOutN, &w.BytesInN, &w.LatencyN, &w.AmountN} {
		*p = u32()
	}
	for i := range w.New {
		w.New[i] = u16()
	}
	for i := range w.Actions {
		w.Actions[i] = u16()
	}
	w.BytesOut, w.BytesIn, w.Latency, w.AmountSum = f64(), f64(), f64(), f64()
	for i := range w.targets {
		w.targets[i] = u64()
	}
	w.First, w.Last = int64(u64()), int64(u64())
	w.Flags = data[off]
	return off + 1, nil
}

// CredentialFingerprint is the first-seen set's fingerprint of credential
// id: SeenSet.Contains tells whether an agent or group has presented it.
func CredentialFingerprint(id []byte) uint32 { return uint32(Hash64(id, seedCredential) >> 32) }
