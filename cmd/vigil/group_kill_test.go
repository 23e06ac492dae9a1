//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
)

// Three `vigil run` processes share the events topic as one consumer group.
// Part way through the stream one of them is SIGKILLed: no last output, no
// checkpoint, no commit, no leaving the group; the group learns of it only
// when its session expires. The survivors take its partitions over, restore
// their state from the state topic, reprocess what it had not checkpointed,
// and in the end the alerts written by the three — deduplicated by alert_id
// — are exactly those of one uninterrupted `vigil run` over the same topic,
// and so are the signed revocation requests (by request_id) and the dead
// letters. The time from the kill until the survivors consume the dead
// member's partitions again is logged as "rebalance-to-resume".
//
// Why the two runs must agree, alert for alert and byte for byte: an
// alert's id and content depend only on the events of its partition, in
// partition order, which Kafka keeps however the events are produced and
// read; baselines and peer groups are per partition. Windows close on event
// time only here: idle_timeout (the one wall-clock input) is far longer than
// the test, so both runs end with the same windows still open (`vigil run`
// does not close them when it stops) and score exactly the same closed
// windows and early decisions. Both runs read the whole topic. (Revocation
// requests need more care: see gkConfig.)
//
// Linux only: children get Pdeathsig so that none outlives a test binary
// that dies without running its cleanups (a -timeout panic).
func TestGroupSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds vigil and runs four vigil processes for about half a minute")
	}
	t.Cleanup(func() { goleak.VerifyNone(t) })
	began := time.Now()
	dir := t.TempDir()
	bin := filepath.Join(dir, "vigil")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("vigil built in %v", time.Since(began).Round(time.Millisecond))
	key, pub := filepath.Join(dir, "sign.pem"), filepath.Join(dir, "sign.pub")
	if out, err := exec.Command(bin, "keygen", "--key", key, "--pub", pub).CombinedOutput(); err != nil {
		t.Fatalf("vigil keygen: %v\n%s", err, out)
	}
	pubKey, err := detector.LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]ed25519.PublicKey{gkKeyID: pubKey}

	addr := startDevbroker(t, "--topic", fmt.Sprintf("%s:%d", gkTopic, gkParts))
	tr := &kafka.Transport{}
	t.Cleanup(tr.CloseIdleConnections) // after the producer has stopped
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 10 * time.Second}
	events := gkEvents(t)

	// Everything each run writes goes to topics and a state topic of its
	// own: the state topic is per events topic, not per group, so two
	// groups must not share one.
	ref := gkStart(t, bin, dir, "ref", gkConfig(t, dir, addr, "ref", key))
	var members []*gkProc
	for _, name := range []string{"a", "b", "x"} {
		members = append(members, gkStart(t, bin, dir, name, gkConfig(t, dir, addr, "g", key)))
	}
	all := append([]*gkProc{ref}, members...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range all {
				t.Logf("%s: log (last lines, dead letters left out):\n%s", p.name, p.logTail(40))
			}
		}
	})
	for _, p := range all {
		p.waitWeb(t)
	}
	// Start producing only once every member of g holds partitions: the
	// first member to join would otherwise take all of them and read the
	// first part alone.
	var assigned [][]int
	waitFor(t, 30*time.Second, "a, b and x to share the partitions in one generation, and ref to hold them all", func() bool {
		assigned = nil
		gens := map[int]bool{}
		var held []int
		for _, p := range members {
			gen, parts := p.generation()
			gens[gen] = true
			assigned = append(assigned, parts)
			held = append(held, parts...)
		}
		slices.Sort(held)
		_, refParts := ref.generation()
		return len(gens) == 1 && !gens[0] && slices.Equal(held, gkAllParts()) && slices.Equal(refParts, gkAllParts()) &&
			!slices.ContainsFunc(assigned, func(p []int) bool { return len(p) == 0 })
	})
	x, xParts := members[2], assigned[2]
	survivors := members[:2]
	t.Logf("assignment: a=%v b=%v x=%v (%v after the start of the test, vigil built and started)", assigned[0], assigned[1], xParts, time.Since(began).Round(time.Millisecond))

	// Events go in steadily (a thousand every few milliseconds); once 60%
	// of them are in (event time: day 3 of 4, with incidents), x is
	// SIGKILLed in the middle of reading its partitions: it has processed,
	// and written the output of, messages it has not checkpointed, and has
	// more to read. The rest goes in at full speed while the group notices
	// that x is gone. (The producer holds at 60% until the kill, so that
	// where x's partitions resume does not depend on how fast the test
	// reacts.)
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Topic: gkTopic, Transport: tr, Balancer: &kafka.Murmur2Balancer{},
		BatchSize: 1000, BatchBytes: 1 << 20, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll,
	}
	killAt := len(events) * 6 / 10
	prod := gkProduce(t, w, events, killAt)
	waitFor(t, 30*time.Second, "60% of the events produced, and x reading them", func() bool {
		return prod.n.Load() == int64(killAt) && x.metric("vigil_consumer_messages_total") > 0
	})
	xm := x.metrics()
	base := make([]map[string]float64, len(survivors))
	for i, s := range survivors {
		base[i] = s.metrics()
	}
	x.kill(t)
	killed := time.Now()
	producedAtKill := prod.n.Load()
	close(prod.release)
	committedAtKill := gkCommitted(t, cl, "g")
	var xRead float64
	for _, p := range xParts {
		xRead += xm[gkPartKey("vigil_consumer_messages_total", p)]
		t.Logf("x's partition %d at the kill: committed %d; x had read %v messages of it (at its last scrape)",
			p, committedAtKill[p], xm[gkPartKey("vigil_consumer_messages_total", p)])
	}

	// Rebalance-to-resume: from the kill until every one of x's partitions
	// is read again by a survivor (its per-partition message counter
	// moves); and until the group's committed offset of each has moved
	// past the kill's.
	var resumed, firstResumed, committed time.Duration
	waitFor(t, 60*time.Second, "the survivors to resume x's partitions and commit them", func() bool {
		now := time.Since(killed)
		if resumed == 0 {
			var m []map[string]float64
			for _, s := range survivors {
				m = append(m, s.metrics())
			}
			n := 0
			for _, p := range xParts {
				k := gkPartKey("vigil_consumer_messages_total", p)
				for i := range survivors {
					if m[i][k] > base[i][k] {
						n++
						break
					}
				}
			}
			if n > 0 && firstResumed == 0 {
				firstResumed = now
			}
			if n == len(xParts) {
				resumed = now
			}
		}
		if committed == 0 {
			c := gkCommitted(t, cl, "g")
			moved := true
			for _, p := range xParts {
				moved = moved && c[p] > committedAtKill[p]
			}
			if moved {
				committed = now
			}
		}
		return resumed > 0 && committed > 0
	})
	gen := time.Duration(0)
	for _, s := range survivors {
		if g := s.generationAfter(t, killed); g > 0 && (gen == 0 || g < gen) {
			gen = g
		}
	}
	t.Logf("rebalance-to-resume: %v (session_timeout %v, heartbeat 1s; killed with %d of %d events produced; new generation after %v; first of x's partitions read again after %v; all of them committed past the kill after %v)",
		resumed.Round(time.Millisecond), gkSessionTimeout, producedAtKill, len(events), gen.Round(time.Millisecond),
		firstResumed.Round(time.Millisecond), committed.Round(time.Millisecond))
	if resumed > 45*time.Second {
		t.Errorf("rebalance-to-resume took %v, want < 45s", resumed)
	}
	if err := prod.wait(); err != nil {
		t.Fatal(err)
	}

	ends := gkEnds(t, cl, gkTopic)
	total := int64(0)
	for _, e := range ends {
		total += e
	}
	if total != int64(len(events)) {
		t.Fatalf("the events topic holds %d messages, want %d", total, len(events))
	}
	for _, g := range []string{"ref", "g"} {
		waitFor(t, 60*time.Second, "group "+g+" to commit every partition to its end", func() bool {
			return slices.Equal(gkCommitted(t, cl, g), ends)
		})
	}
	read := xRead
	for _, s := range survivors {
		read += s.metric("vigil_consumer_messages_total")
	}
	// The survivors restored x's partitions from checkpoints with agents in
	// them (not cold), and then continued.
	for _, p := range xParts {
		re := regexp.MustCompile(`msg="partition state restored: [^"]*" partition=` + strconv.Itoa(p) + ` agents=([1-9][0-9]*) .* checkpoint=([0-9]+) .* consume_from=([0-9]+)`)
		var found []string
		for _, s := range survivors {
			for _, m := range re.FindAllStringSubmatch(s.stderr(), -1) {
				found = append(found, fmt.Sprintf("%s: %s agents, checkpoint %s, consume from %s", s.name, m[1], m[2], m[3]))
			}
		}
		if len(found) == 0 {
			t.Errorf("no survivor restored x's partition %d from a checkpoint (no \"partition state restored\" line with agents)", p)
		}
		t.Logf("x's partition %d restored by %s", p, strings.Join(found, "; "))
	}
	restores := 0.0
	for _, s := range survivors {
		restores += s.metric("vigil_state_restore_duration_seconds_count")
	}
	if restores == 0 {
		t.Errorf("vigil_state_restore_duration_seconds_count is 0 on both survivors")
	}
	t.Logf("%d events; group g read %v messages (x at least %v before it died: %v read again after restores); %v checkpoint restores",
		len(events), read, xRead, read-float64(len(events)), restores)

	ref.stop(t)
	for _, s := range survivors {
		s.stop(t)
	}

	// Alerts: the union of what a, b and x wrote (x's up to its death) is
	// the reference's, alert for alert.
	want := map[string]string{}
	wantN := gkAlerts(t, ref, want)
	if len(want) == 0 {
		t.Fatal("the reference run wrote no alerts: the test needs some")
	}
	if wantN != len(want) {
		t.Errorf("the reference run wrote %d alerts, %d distinct: an uninterrupted run writes each once", wantN, len(want))
	}
	got, gotN := map[string]string{}, 0
	var each []string
	for _, p := range members {
		n := gkAlerts(t, p, got)
		gotN += n
		each = append(each, fmt.Sprintf("%s %d", p.name, n))
	}
	gkCompare(t, "alerts", want, got)
	t.Logf("alerts: reference %d; group %d distinct, %d written (%s; %d duplicates from reprocessing)",
		len(want), len(got), gotN, strings.Join(each, ", "), gotN-len(got))

	// Revocation requests: every one verifies; by request_id, none is
	// lost and none added.
	wantRv, wantRvN := gkRevocations(t, cl, "ref-revocations", keys)
	gotRv, gotRvN := gkRevocations(t, cl, "g-revocations", keys)
	if len(wantRv) < 2 {
		t.Fatalf("the reference run wrote %d revocation requests; the test needs several", len(wantRv))
	}
	if wantRvN != len(wantRv) {
		t.Errorf("the reference run wrote %d revocation requests, %d distinct", wantRvN, len(wantRv))
	}
	gkCompare(t, "revocation requests", wantRv, gotRv)
	modes := map[string]int{}
	for _, b := range wantRv {
		var rv struct{ Mode, Why string }
		if err := json.Unmarshal([]byte(b), &rv); err != nil {
			t.Fatal(err)
		}
		modes[rv.Mode+"/"+rv.Why]++
	}
	t.Logf("revocation requests: reference %d %v; group %d distinct, %d messages (%d duplicates)", len(wantRv), modes, len(gotRv), gotRvN, gotRvN-len(gotRv))

	// Dead letters, by source partition and offset.
	wantDL, _ := gkDeadLetters(t, cl, "ref-dlq")
	gotDL, gotDLN := gkDeadLetters(t, cl, "g-dlq")
	if len(wantDL) == 0 {
		t.Fatal("the reference run wrote no dead letters: the test needs some")
	}
	gkCompare(t, "dead letters", wantDL, gotDL)
	t.Logf("dead letters: reference %d; group %d distinct, %d messages", len(wantDL), len(gotDL), gotDLN)
	t.Logf("test took %v", time.Since(began).Round(time.Millisecond))
}

const (
	gkTopic          = "agent-events"
	gkParts          = 6
	gkKeyID          = "vigil-test"
	gkSessionTimeout = 6 * time.Second // kfake's minimum
)

// gkEvents is a simulated fleet with incidents (about 145k lines, invalid
// and duplicate ones included), keyed by agent_id; a line without one is
// its own key.
func gkEvents(t *testing.T) []kafka.Message {
	t.Helper()
	var buf bytes.Buffer
	if _, err := sim.Generate(sim.Config{Seed: 7, Agents: 36, Days: 4, WarmupDays: 2, Incidents: 10}, &buf, io.Discard); err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for l := range bytes.SplitSeq(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), []byte("\n")) {
		key := l
		if _, after, ok := bytes.Cut(l, []byte(`"agent_id":"`)); ok {
			if id, _, ok := bytes.Cut(after, []byte(`"`)); ok {
				key = id
			}
		}
		msgs = append(msgs, kafka.Message{Key: key, Value: l})
	}
	return msgs
}

// gkConfig writes the configuration of a member of group: short session,
// frequent checkpoints, windows closed by event time only, a revocation
// request for every critical alert (enforce policy, which runs as dry run
// while events are unverified: see forged_test.go), outputs to topics
// named after the group.
//
// The budget is small and spans the whole fleet's run, and an agent needs
// two critical alerts below min_score: a partition's revocation policy
// state (enforced requests within budget_window, recent critical alerts,
// the last window requested per agent) is part of its checkpoint, so after
// a takeover the survivors neither re-spend the budget nor forget an
// agent's earlier alerts, and the requests equal the uninterrupted run's.
func gkConfig(t *testing.T, dir, addr, group, key string) string {
	t.Helper()
	cfg := fmt.Sprintf(`detector:
  revocation:
    enabled: true
    mode: enforce
    min_score: 80
    min_alerts: 2
    budget: 3
    budget_per_class: 2
    budget_window: 96h
kafka:
  brokers: [%q]
  topic: %s
  group: %s
  state_topic: %[3]s-state
  idle_timeout: 10m
  checkpoint_interval: 500ms
  session_timeout: %v
  heartbeat_interval: 1s
  rebalance_timeout: 10s
  shutdown_timeout: 5s
  join_backoff: 250ms
  dial_timeout: 5s
  retry_backoff: 50ms
  max_retry_backoff: 1s
outputs:
  stdout: true
  signing_key:
    file: %q
    id: %s
  revocations:
    topic: %[3]s-revocations
  dead_letters:
    topic: %[3]s-dlq
`, addr, gkTopic, group, gkSessionTimeout, key, gkKeyID)
	p := filepath.Join(dir, group+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// gkProc is a `vigil run` child process; its stdout and stderr go to files.
type gkProc struct {
	name             string
	cmd              *exec.Cmd
	outPath, errPath string
	web              string
	exited           chan struct{} // closed when Wait has returned
	http             *http.Client
}

func gkStart(t *testing.T, bin, dir, name, config string) *gkProc {
	t.Helper()
	p := &gkProc{
		name: name, outPath: filepath.Join(dir, name+".stdout"), errPath: filepath.Join(dir, name+".stderr"),
		exited: make(chan struct{}),
		http:   &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second},
	}
	out, err := os.Create(p.outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	errf, err := os.Create(p.errPath)
	if err != nil {
		t.Fatal(err)
	}
	defer errf.Close()
	p.cmd = exec.Command(bin, "run", "--config", config, "--web.listen-address", "127.0.0.1:0")
	p.cmd.Stdout, p.cmd.Stderr = out, errf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait() // the exit status is in cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

var gkWeb = regexp.MustCompile(`web=(http://\S+)`)

// waitWeb waits for the web address in the log.
func (p *gkProc) waitWeb(t *testing.T) {
	t.Helper()
	waitFor(t, 20*time.Second, p.name+"'s web address in its log", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("%s exited (%v) before it started:\n%s", p.name, p.cmd.ProcessState, p.stderr())
		default:
		}
		if m := gkWeb.FindStringSubmatch(p.stderr()); m != nil {
			p.web = m[1]
			return true
		}
		return false
	})
}

func (p *gkProc) stderr() string {
	b, _ := os.ReadFile(p.errPath)
	return string(b)
}

// logTail returns the last n lines of the member's log.
func (p *gkProc) logTail(n int) string {
	var lines []string
	for l := range strings.SplitSeq(strings.TrimSuffix(p.stderr(), "\n"), "\n") {
		if !strings.HasPrefix(l, "dead-letter ") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

var gkGeneration = regexp.MustCompile(`msg="consumer group generation" .* generation=([0-9]+) .* partitions="?\[([0-9 ]*)\]`)

// generation returns the member's last generation and its partitions, from
// its log (0 and nil before the first).
func (p *gkProc) generation() (int, []int) {
	m := gkGeneration.FindAllStringSubmatch(p.stderr(), -1)
	if m == nil {
		return 0, nil
	}
	last := m[len(m)-1]
	gen, _ := strconv.Atoi(last[1])
	var ids []int
	for f := range strings.FieldsSeq(last[2]) {
		id, _ := strconv.Atoi(f)
		ids = append(ids, id)
	}
	return gen, ids
}

func gkAllParts() []int {
	ids := make([]int, gkParts)
	for i := range ids {
		ids[i] = i
	}
	return ids
}

var gkGenerationTime = regexp.MustCompile(`time=(\S+) level=INFO msg="consumer group generation"`)

// generationAfter returns how long after t0 the member logged its first
// generation after t0 (0: none).
func (p *gkProc) generationAfter(t *testing.T, t0 time.Time) time.Duration {
	t.Helper()
	for _, m := range gkGenerationTime.FindAllStringSubmatch(p.stderr(), -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatal(err)
		}
		if at.After(t0) {
			return at.Sub(t0)
		}
	}
	return 0
}

// metrics scrapes the member's /metrics into series → value (series
// named as exposed, labels and all); empty when it cannot be reached.
func (p *gkProc) metrics() map[string]float64 {
	m := map[string]float64{}
	resp, err := p.http.Get(p.web + "/metrics")
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		i := strings.LastIndexByte(l, ' ')
		if strings.HasPrefix(l, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			m[l[:i]] = v
		}
	}
	return m
}

// metric is the sum of a metric's series.
func (p *gkProc) metric(name string) float64 {
	var sum float64
	for k, v := range p.metrics() {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

func gkPartKey(name string, part int) string { return fmt.Sprintf("%s{partition=\"%d\"}", name, part) }

// kill SIGKILLs the process and waits for it to be gone.
func (p *gkProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("%s: %v, want killed by SIGKILL", p.name, p.cmd.ProcessState)
	}
}

// stop SIGTERMs the process and wants it to exit 0 (output written and
// offsets committed) soon.
func (p *gkProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30s of SIGTERM", p.name)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("%s exited %d on SIGTERM, want 0", p.name, code)
	}
}

// gkAlerts adds the alerts on a member's stdout to alerts, by alert_id
// (the JSON line), and returns how many lines there were. An alert written
// twice must be written the same. A last line without its newline (a write
// cut by SIGKILL) does not count: it was never acknowledged.
func gkAlerts(t *testing.T, p *gkProc, alerts map[string]string) int {
	t.Helper()
	b, err := os.ReadFile(p.outPath)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i != len(b)-1 {
		t.Logf("%s: ignoring an unfinished last line on stdout: %q", p.name, b[i+1:])
		b = b[:i+1]
	}
	n := 0
	for l := range strings.SplitSeq(strings.TrimSuffix(string(b), "\n"), "\n") {
		if l == "" {
			continue
		}
		var a struct {
			ID string `json:"alert_id"`
		}
		if err := json.Unmarshal([]byte(l), &a); err != nil || a.ID == "" {
			t.Fatalf("%s: stdout line is not an alert: %v: %.200s", p.name, err, l)
		}
		if prev, ok := alerts[a.ID]; ok && prev != l {
			t.Errorf("alert %s written twice with different content:\n%s\n%s", a.ID, prev, l)
		}
		alerts[a.ID] = l
		n++
	}
	return n
}

// gkRevocations reads every revocation request on topic, checks its
// signature, and returns them by request_id (the signed body), and how
// many messages there were.
func gkRevocations(t *testing.T, cl *kafka.Client, topic string, keys map[string]ed25519.PublicKey) (map[string]string, int) {
	t.Helper()
	out := map[string]string{}
	msgs := gkReadAll(t, cl, topic)
	for _, m := range msgs {
		rv, err := detector.VerifyRevocation(m.Value, keys)
		if err != nil {
			t.Errorf("%s: partition %d offset %d: %v", topic, m.Partition, m.Offset, err)
			continue
		}
		if string(m.Key) != rv.AgentID {
			t.Errorf("%s: request %s keyed %q, want its agent_id %q", topic, rv.RequestID, m.Key, rv.AgentID)
		}
		if prev, ok := out[rv.RequestID]; ok && prev != string(m.Value) {
			t.Errorf("%s: request %s written twice with different content:\n%s\n%s", topic, rv.RequestID, prev, m.Value)
		}
		out[rv.RequestID] = string(m.Value)
	}
	return out, len(msgs)
}

// gkDeadLetters returns the dead letters on topic by source partition and
// offset (the reason), and how many messages there were.
func gkDeadLetters(t *testing.T, cl *kafka.Client, topic string) (map[string]string, int) {
	t.Helper()
	out := map[string]string{}
	msgs := gkReadAll(t, cl, topic)
	for _, m := range msgs {
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		out[h["source_partition"]+"/"+h["source_offset"]] = h["reason"]
	}
	return out, len(msgs)
}

// gkReadAll reads every message of topic, partition by partition, up to
// the ends it has now.
func gkReadAll(t *testing.T, cl *kafka.Client, topic string) []kafka.Message {
	t.Helper()
	var msgs []kafka.Message
	for p, end := range gkEnds(t, cl, topic) {
		if end == 0 {
			continue
		}
		rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{cl.Addr.String()}, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		for {
			m, err := rd.ReadMessage(ctx)
			if err != nil {
				cancel()
				rd.Close()
				t.Fatalf("%s partition %d: %v", topic, p, err)
			}
			msgs = append(msgs, m)
			if m.Offset >= end-1 {
				break
			}
		}
		cancel()
		if err := rd.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return msgs
}

// gkEnds returns the end offset of every partition of topic.
func gkEnds(t *testing.T, cl *kafka.Client, topic string) []int64 {
	t.Helper()
	md, err := cl.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
		t.Fatalf("metadata of %s: %+v, %v", topic, md, err)
	}
	var req []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		req = append(req, kafka.LastOffsetOf(p.ID))
	}
	resp, err := cl.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		t.Fatalf("end offsets of %s: %v", topic, err)
	}
	ends := make([]int64, len(req))
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("end offset of %s partition %d: %v", topic, po.Partition, po.Error)
		}
		ends[po.Partition] = po.LastOffset
	}
	return ends
}

// gkCommitted returns group's committed offset of each events partition
// (-1: none).
func gkCommitted(t *testing.T, cl *kafka.Client, group string) []int64 {
	t.Helper()
	parts := make([]int, gkParts)
	out := make([]int64, gkParts)
	for i := range parts {
		parts[i], out[i] = i, -1
	}
	resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{gkTopic: parts}})
	if err != nil {
		t.Fatalf("committed offsets of %s: %v", group, err)
	}
	for _, p := range resp.Topics[gkTopic] {
		if p.Error == nil {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out
}

// gkProducer writes messages in the background.
type gkProducer struct {
	n       atomic.Int64  // messages written
	release chan struct{} // closed by the test: write the rest
	err     error         // set before done closes
	done    chan struct{}
}

// gkProduce writes msgs in order, in batches of a thousand: the first hold
// with a pause after each batch, then, once release is closed, the rest at
// full speed. It stops early when writing fails or the test ends, and then
// closes w.
func gkProduce(t *testing.T, w *kafka.Writer, msgs []kafka.Message, hold int) *gkProducer {
	ctx, cancel := context.WithCancel(context.Background())
	p := &gkProducer{release: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() {
		cancel()
		p.wait()
	})
	write := func(msgs []kafka.Message, pause time.Duration) bool {
		for c := range slices.Chunk(msgs, 1000) {
			if err := w.WriteMessages(ctx, c...); err != nil {
				p.err = fmt.Errorf("produce: %w", err)
				return false
			}
			p.n.Add(int64(len(c)))
			time.Sleep(pause)
		}
		return true
	}
	go func() {
		defer close(p.done)
		defer w.Close()
		if !write(msgs[:hold], 5*time.Millisecond) {
			return
		}
		select {
		case <-p.release:
			write(msgs[hold:], 0)
		case <-ctx.Done():
		}
	}()
	return p
}

func (p *gkProducer) wait() error {
	<-p.done
	return p.err
}

// gkCompare wants got to have exactly want's keys, each with want's value,
// and names the differences.
func gkCompare(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	var missing, extra, differ []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, k+": "+want[k])
		case g != want[k]:
			differ = append(differ, fmt.Sprintf("%s:\n    reference %s\n    group     %s", k, want[k], g))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			extra = append(extra, k+": "+got[k])
		}
	}
	if len(missing)+len(extra)+len(differ) > 0 {
		t.Errorf("%s: %d in the reference, %d from the group: %d lost, %d extra, %d different\nlost:\n  %s\nextra:\n  %s\ndifferent:\n  %s",
			what, len(want), len(got), len(missing), len(extra), len(differ),
			strings.Join(missing, "\n  "), strings.Join(extra, "\n  "), strings.Join(differ, "\n  "))
	}
}
