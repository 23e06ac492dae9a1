//go:build linux

package main

// (Linux only, as group_kill_test.go whose gkReadAll it uses.)

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
)

// Events are unauthenticated: whoever can write to the events topic can
// write them in any agent's name. Forged events must not drive enforcement
// (issue 17 item 3). `vigil run`, revocation enabled in enforce mode, reads
// a simulated fleet into which an attacker has written
//   - framing: three denied calls to restricted privileged targets in the
//     name of each of three warm benign agents on the partition of a real
//     incident's agent, half an hour before the incident, carrying the
//     victim's own credential, a made-up one, or another victim's;
//   - decoys: a quarter of an hour before the incident, denied calls in the
//     incident agent's own name carrying a made-up credential and a benign
//     agent's real one.
//
// Before the fix the framed agents' credentials were quarantined in
// enforce mode and spent the partition's budget, and the incident's
// request went out as a dry run "budget" (or not at all: the decoy alert's
// request held the agent back for its TTL). Now: vigil says at start-up
// that enforce runs as dry run because events are unverified; no request
// is enforced; every request names a credential its agent itself used in
// genuine events (never a decoy, never another agent's); the budget is
// untouched, so the incident's agent gets its request with why
// "unverified", naming its own credential.
func TestRunForgedEventsDoNotEnforce(t *testing.T) {
	if testing.Short() {
		t.Skip("streams a simulated fleet through vigil run")
	}
	t.Cleanup(func() { goleak.VerifyNone(t) })
	began := time.Now()
	const parts = 2
	addr := startDevbroker(t, "--topic", fmt.Sprintf("agent-events:%d", parts))

	cfg := sim.Config{Seed: fgSeed, Agents: 18, Days: 3, WarmupDays: 2, Incidents: 3}
	msgs := simMessages(t, cfg)
	fleet := fgFleet(t, cfg, msgs)
	inc, victims := fgChoose(t, fleet, parts)
	t.Logf("incident %s %s on %s at %s; framed: %s", inc.ID, inc.Kind, inc.AgentID, inc.Start.Format(time.RFC3339), strings.Join(victims, ", "))

	// The forgeries, each in its place in the stream (event time).
	frame := inc.Start.Add(-30 * time.Minute)
	made := []string{"x509:f0f0f0f0f0f0f0f0", "kid:deadbeefdeadbeef"}
	var forged []fgEvent
	for i, v := range victims {
		cred := []string{fleet.agents[v].mainCred(), made[0], fleet.agents[victims[0]].mainCred()}[i]
		for j, call := range fgPrivileged {
			forged = append(forged, fgEvent{at: frame.Add(time.Duration(20*j+7*i) * time.Second), agent: v, class: fleet.agents[v].class,
				target: call[0], action: call[1], cred: cred, ip: fleet.agents[v].ip})
		}
	}
	decoy := inc.Start.Add(-15 * time.Minute)
	ia := fleet.agents[inc.AgentID]
	for j, cred := range []string{made[1], made[1], fleet.agents[victims[0]].mainCred(), fleet.agents[victims[0]].mainCred()} {
		call := fgPrivileged[j%len(fgPrivileged)]
		forged = append(forged, fgEvent{at: decoy.Add(time.Duration(15*j) * time.Second), agent: inc.AgentID, class: ia.class,
			target: call[0], action: call[1], cred: cred, ip: ia.ip})
	}
	msgs = fgInsert(msgs, forged)

	dir := t.TempDir()
	key, pub := filepath.Join(dir, "sign.pem"), filepath.Join(dir, "sign.pub")
	var kout, kerr bytes.Buffer
	if rc := run([]string{"keygen", "--key", key, "--pub", pub}, nil, &kout, &kerr); rc != 0 {
		t.Fatalf("keygen: %s", kerr.String())
	}
	pubKey, err := detector.LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	// A budget the framing alone would spend before the incident.
	conf := writeFile(t, dir, "vigil.yaml", fmt.Sprintf(`detector:
  revocation:
    enabled: true
    mode: enforce
    budget: %d
    budget_per_class: 3
kafka:
  checkpoint_interval: 500ms
  idle_timeout: 10m
outputs:
  signing_key:
    file: %q
    id: vigil-test
`, len(victims), key))
	produce(t, addr, msgs, 0)

	_, stderr, metrics := runToEnd(t, addr, "forged", parts, len(msgs), "--config", conf)

	// Start-up: enforce runs as dry run, and the log says why and where.
	var warned bool
	for l := range strings.SplitSeq(stderr.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "detector.revocation.mode") &&
			strings.Contains(l, "enforce runs as dry run") && strings.Contains(l, "unverified") {
			warned = true
		}
	}
	if !warned {
		t.Error("no start-up warning that enforce runs as dry run because events are unverified")
	}

	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}
	var rvs []*detector.Revocation
	for _, m := range gkReadAll(t, cl, devRevocationsTopic) {
		rv, err := detector.VerifyRevocation(m.Value, map[string]ed25519.PublicKey{"vigil-test": pubKey})
		if err != nil {
			t.Fatalf("revocation request: %v: %s", err, m.Value)
		}
		rvs = append(rvs, rv)
	}
	byWhy := map[string]int{}
	var incReq, framedReq []string
	for _, rv := range rvs {
		byWhy[rv.Mode+"/"+rv.Why]++
		desc := fmt.Sprintf("%s %s/%s %s credential %s evidence %v", rv.AgentID, rv.Mode, rv.Why, rv.WindowStart.Format("Jan 2 15:04"), rv.CredentialID, rv.EvidenceCredentials)
		if rv.Mode == detector.ModeEnforce {
			t.Errorf("enforced on unverified events: %s", desc)
		}
		if rv.Why == detector.WhyBudget {
			t.Errorf("the budget was spent: %s", desc)
		}
		// Only credentials the agent itself used in genuine events.
		if a := fleet.agents[rv.AgentID]; a == nil || a.creds[rv.CredentialID] == 0 {
			t.Errorf("request names a credential its agent never used (a decoy, or another agent's): %s", desc)
		}
		switch {
		case rv.AgentID == inc.AgentID:
			incReq = append(incReq, desc)
			if rv.Why == detector.WhyUnverified && !rv.WindowEnd.Before(decoy) && rv.WindowStart.Before(inc.End) {
				incReq[len(incReq)-1] += " ✓"
			}
		case slices.Contains(victims, rv.AgentID):
			framedReq = append(framedReq, desc)
		}
	}
	sort.Strings(incReq)
	sort.Strings(framedReq)
	t.Logf("%d revocation requests %v\nincident agent's:\n  %s\nframed agents':\n  %s", len(rvs), byWhy,
		strings.Join(incReq, "\n  "), strings.Join(framedReq, "\n  "))
	if !slices.ContainsFunc(incReq, func(s string) bool { return strings.HasSuffix(s, " ✓") }) {
		t.Error("the incident's agent got no request (dry run, why unverified) from the decoy until the incident's end")
	}
	if len(framedReq) == 0 {
		t.Error("no framed agent got a request: the framing did not raise a critical alert, and the test proves nothing")
	}
	if n := metricSum(metrics, `vigil_detector_revocations_total{mode="enforce"`); n != 0 {
		t.Errorf("vigil_detector_revocations_total: %v enforced", n)
	}
	if n := metricSum(metrics, `vigil_detector_revocations_total{mode="dry_run",why="unverified"}`); n != float64(len(rvs)) {
		t.Errorf(`vigil_detector_revocations_total{mode="dry_run",why="unverified"} is %v, want %d (every request)`, n, len(rvs))
	}
	t.Logf("test took %v", time.Since(began).Round(time.Millisecond))
}

// fgSeed is a simulation whose chosen incident is detected.
const fgSeed = 1

// fgPrivileged are restricted privileged calls a benign agent never makes.
var fgPrivileged = [][2]string{{"iam-svc", "iam.policy.attach"}, {"vault", "vault.read"}, {"hsm-gateway", "keys.export"}}

type fgAgent struct {
	class, ip  string
	creds      map[string]int // credential → genuine events presenting it
	first, end time.Time      // first and last genuine event
	times      []time.Time
}

// mainCred is the credential the agent presents most.
func (a *fgAgent) mainCred() string {
	best := ""
	for c, n := range a.creds {
		if n > a.creds[best] || n == a.creds[best] && c < best {
			best = c
		}
	}
	return best
}

// active reports whether the agent has genuine events within d of t.
func (a *fgAgent) active(t time.Time, d time.Duration) bool {
	i := sort.Search(len(a.times), func(i int) bool { return !a.times[i].Before(t.Add(-d)) })
	return i < len(a.times) && !a.times[i].After(t.Add(d))
}

type fgFleetT struct {
	agents    map[string]*fgAgent // by agent_id
	incidents []sim.Incident      // the simulation's truth
}

// fgFleet reads the genuine events' agents and the simulation's truth.
func fgFleet(t *testing.T, cfg sim.Config, msgs []kafka.Message) *fgFleetT {
	t.Helper()
	f := &fgFleetT{agents: map[string]*fgAgent{}}
	for _, m := range msgs {
		var e struct {
			TS         time.Time `json:"ts"`
			Agent      string    `json:"agent_id"`
			Class      string    `json:"agent_class"`
			Credential string    `json:"credential_id"`
			SrcIP      string    `json:"src_ip"`
		}
		if json.Unmarshal(m.Value, &e) != nil || e.Agent == "" || e.TS.IsZero() {
			continue
		}
		a := f.agents[e.Agent]
		if a == nil {
			a = &fgAgent{creds: map[string]int{}, first: e.TS, ip: e.SrcIP}
			f.agents[e.Agent] = a
		}
		if a.class == "" {
			a.class = e.Class
		}
		if e.Credential != "" {
			a.creds[e.Credential]++
		}
		a.times = append(a.times, e.TS)
	}
	for _, a := range f.agents {
		slices.SortFunc(a.times, func(x, y time.Time) int { return x.Compare(y) })
		a.first, a.end = a.times[0], a.times[len(a.times)-1]
	}
	var truth bytes.Buffer
	if _, err := sim.Generate(cfg, io.Discard, &truth); err != nil {
		t.Fatal(err)
	}
	for l := range bytes.SplitSeq(bytes.TrimSpace(truth.Bytes()), []byte("\n")) {
		var inc sim.Incident
		if err := json.Unmarshal(l, &inc); err != nil {
			t.Fatal(err)
		}
		f.incidents = append(f.incidents, inc)
	}
	return f
}

// fgChoose picks the first malicious incident (its agent established
// before, presenting its own credentials) with three warm benign agents on
// its partition, active when the framing happens, not named in the truth.
func fgChoose(t *testing.T, f *fgFleetT, parts int) (sim.Incident, []string) {
	t.Helper()
	named := map[string]bool{}
	for _, inc := range f.incidents {
		named[inc.AgentID] = true
	}
	partOf := func(agent string) int {
		ps := make([]int, parts)
		for i := range ps {
			ps[i] = i
		}
		return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(agent)}, ps...)
	}
	ids := slices.Sorted(maps.Keys(f.agents))
	for _, inc := range f.incidents {
		if inc.Benign || inc.Kind == sim.KindUnknownIdentity || inc.Kind == sim.KindCredentialMisuse || f.agents[inc.AgentID] == nil {
			continue
		}
		frame := inc.Start.Add(-30 * time.Minute)
		var victims []string
		for _, id := range ids {
			a := f.agents[id]
			if id != inc.AgentID && !named[id] && partOf(id) == partOf(inc.AgentID) && frame.Sub(a.first) > 24*time.Hour &&
				a.active(frame, 5*time.Minute) && len(victims) < 3 {
				victims = append(victims, id)
			}
		}
		if len(victims) == 3 {
			return inc, victims
		}
	}
	t.Fatalf("simulation seed %d has no malicious incident with three warm benign agents on its partition: choose another fgSeed", fgSeed)
	return sim.Incident{}, nil
}

// fgEvent is a forged event.
type fgEvent struct {
	at                                     time.Time
	agent, class, target, action, cred, ip string
}

// fgInsert puts each forged event into the stream before the first genuine
// event after it (the simulator's stream is in event time, give or take a
// few late ones).
func fgInsert(msgs []kafka.Message, forged []fgEvent) []kafka.Message {
	slices.SortStableFunc(forged, func(x, y fgEvent) int { return x.at.Compare(y.at) })
	out := make([]kafka.Message, 0, len(msgs)+len(forged))
	for _, m := range msgs {
		var e struct {
			TS time.Time `json:"ts"`
		}
		if json.Unmarshal(m.Value, &e) == nil && !e.TS.IsZero() {
			for len(forged) > 0 && !forged[0].at.After(e.TS) {
				out = append(out, forged[0].message(len(out)))
				forged = forged[1:]
			}
		}
		out = append(out, m)
	}
	for _, f := range forged {
		out = append(out, f.message(len(out)))
	}
	return out
}

func (f fgEvent) message(n int) kafka.Message {
	v, _ := json.Marshal(map[string]any{
		"event_id": fmt.Sprintf("forged-%d", n), "ts": f.at.UTC().Format("2006-01-02T15:04:05.000Z"),
		"agent_id": f.agent, "agent_class": f.class, "target_id": f.target, "action": f.action,
		"decision": "deny", "data_class": "restricted", "status": "denied", "bytes_in": 300, "bytes_out": 0,
		"latency_ms": 20.0, "credential_id": f.cred, "auth": "mtls", "attested": true, "src_ip": f.ip,
	})
	return kafka.Message{Key: []byte(f.agent), Value: v}
}
