package main

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
)

var (
	etTS    = regexp.MustCompile(`"ts":"([^"]+)"`)
	etAgent = regexp.MustCompile(`"agent_id":"([^"]+)"`)
)

// etForge returns a copy of m stamped d later, in agent's name ("": its
// own), with a new event_id.
func etForge(t *testing.T, m kafka.Message, d time.Duration, agent, tag string) kafka.Message {
	t.Helper()
	v := bytes.Clone(m.Value)
	ts := etTS.FindSubmatch(v)
	if ts == nil {
		t.Fatalf("no ts in %s", v)
	}
	at, err := time.Parse(time.RFC3339Nano, string(ts[1]))
	if err != nil {
		t.Fatal(err)
	}
	v = bytes.Replace(v, ts[0], []byte(`"ts":"`+at.Add(d).UTC().Format(time.RFC3339Nano)+`"`), 1)
	if tag != "" {
		v = bytes.Replace(v, []byte(`"event_id":"`), []byte(`"event_id":"`+tag), 1)
	}
	key := m.Key
	if agent != "" {
		v = etAgent.ReplaceAll(v, []byte(`"agent_id":"`+agent+`"`))
		key = []byte(agent)
	}
	return kafka.Message{Key: key, Value: v}
}

// Forged timestamps through vigil run (issue 17 item 2). Into a simulated
// fleet an attacker writes one event a day ahead and one a century ahead, in
// made-up agents' names; one event a few minutes ahead in every window;
// and one honest agent's producer runs five minutes fast. Before the fix
// the newest event time closed every open window of its partition and the
// real events behind it were dead-lettered as late (thousands); the 2199
// event blinded its partition for good. Now: no event is late, the 2199
// event is a dead letter "future" (ahead of the broker's timestamp), and
// every incident the fleet's agents commit is still alerted. Events
// produced under a Kafka key other than their agent_id are dead letters
// "key_mismatch".
func TestRunForgedTimestampsBlindNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("streams a simulated fleet through vigil run")
	}
	t.Cleanup(func() { goleak.VerifyNone(t) })
	const parts = 2
	addr := startDevbroker(t, "--topic", fmt.Sprintf("agent-events:%d", parts))
	cfg := sim.Config{Seed: 3, Agents: 16, Days: 3, WarmupDays: 2, Incidents: 3}
	msgs := simMessages(t, cfg)
	var fast string // the agent whose producer runs five minutes fast
	for _, m := range msgs {
		if a := etAgent.FindSubmatch(m.Value); a != nil {
			fast = string(a[1])
			break
		}
	}
	var out []kafka.Message
	forged, rekeyed := 0, 0
	for i, m := range msgs {
		// (From the two-thousandth message: while a partition knows
		// only two or three agents, its quorum is one of them.)
		if a := etAgent.FindSubmatch(m.Value); a != nil && string(a[1]) == fast && i > 2000 {
			m = etForge(t, m, 5*time.Minute, "", "")
		}
		out = append(out, m)
		if etTS.Find(m.Value) == nil || etAgent.Find(m.Value) == nil {
			continue
		}
		switch {
		case i == len(msgs)/3:
			out = append(out, etForge(t, m, 24*time.Hour, "spiffe://bank.example/agent/ghost-day", "forged-day-"))
			forged++
		case i == len(msgs)/2:
			out = append(out, etForge(t, m, 100*365*24*time.Hour, "spiffe://bank.example/agent/ghost-2126", "forged-2126-"))
			forged++
		case i%1000 == 500:
			// The agent's events under another key (issue 17 item 4): they
			// would land on another partition and split its baseline.
			re := etForge(t, m, 0, "", fmt.Sprintf("rekeyed-%d-", i))
			re.Key = []byte("spiffe://bank.example/agent/someone-else")
			out = append(out, re)
			rekeyed++
		case i%250 == 0 && i > 2000:
			out = append(out, etForge(t, m, 4*time.Minute, fmt.Sprintf("spiffe://bank.example/agent/ghost-%d", i%5), fmt.Sprintf("forged-%d-", i)))
			forged++
		}
	}
	produce(t, addr, out, 0)

	stdout, _, metrics := runToEnd(t, addr, "eventtime", parts, len(out))

	late := metricSum(metrics, `vigil_consumer_dead_letters_total{reason="late"}`)
	future := metricSum(metrics, `vigil_consumer_dead_letters_total{reason="future"}`)
	t.Logf("fast agent %s", fast)
	t.Logf("%d events, %d forged; dead letters: %v late, %v future", len(out), forged, late, future)
	if late != 0 {
		t.Errorf("%v events dead-lettered as late: forged or skewed clocks closed other agents' windows", late)
	}
	if n := metricSum(metrics, `vigil_consumer_dead_letters_total{reason="key_mismatch"}`); n != float64(rekeyed) {
		t.Errorf("%v events dead-lettered as key_mismatch, want %d", n, rekeyed)
	}
	if future != 1 {
		t.Errorf("%v events dead-lettered as future, want 1 (the one stamped a century ahead)", future)
	}
	// Every agent a replay of the genuine events alerts on is still
	// alerted on.
	alerted := map[string]bool{}
	for l := range strings.SplitSeq(stdout.String(), "\n") {
		if a := etAgent.FindStringSubmatch(l); a != nil {
			alerted[a[1]] = true
		}
	}
	want := map[string]bool{}
	p, err := detector.NewPipeline(detector.DefaultConfig(), func(a *detector.Alert) { want[a.AgentID] = true })
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		_ = p.Process(m.Value)
	}
	p.Flush()
	if len(want) == 0 {
		t.Fatal("the genuine events raise no alert: the test proves nothing")
	}
	for id := range want {
		if !alerted[id] {
			t.Errorf("agent %s, alerted on in a replay of the genuine events, not alerted", id)
		}
	}
	t.Logf("alerted: %v (replay of the genuine events: %v)", alerted, want)
}

// runToEnd runs `vigil run` in group until it has consumed and committed
// all n messages of the events topic's parts partitions, scrapes its
// metrics, stops it with SIGTERM, and returns its stdout, stderr and
// metrics (stderr's tail is logged if the test fails).
func runToEnd(t *testing.T, addr, group string, parts, n int, extra ...string) (stdout, stderr *syncBuffer, metrics string) {
	t.Helper()
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	web, rc := startRun(t, addr, group, stdout, stderr, extra...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vigil run stderr (tail):\n%s", tail(stderr.String(), 3000))
		}
	})
	waitFor(t, 60*time.Second, "every event consumed and committed", func() bool {
		c, e := groupProgress(t, addr, group, parts)
		return c == e && e == int64(n)
	})
	metrics = scrape(t, web)
	sigterm(t, rc, stderr)
	return stdout, stderr, metrics
}
