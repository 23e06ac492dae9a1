package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// syncBuffer is a bytes.Buffer safe for a writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var devbrokerAddr = regexp.MustCompile(`listening on (\S+) `)

// startDevbroker runs `vigil devbroker` in-process on a free port until the
// test ends, and returns its address.
func startDevbroker(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan error, 1)
	go func() { done <- runDevbroker(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), &out, &errb) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("devbroker: %v", err)
		}
	})
	var addr string
	waitFor(t, 10*time.Second, "devbroker to listen", func() bool {
		m := devbrokerAddr.FindStringSubmatch(out.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	return addr
}

// vigil devbroker serves the topics named and those of vigil's it was not
// given (the state topic with the events topic's partitions), with the
// state topic compacted as vigil run checks with DescribeConfigs.
func TestDevbrokerServesTopics(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	for _, tc := range []struct {
		args  []string
		want  map[string]int
		state string
	}{
		{args: []string{"--topic", "agent-events:3", "--topic", "vigil-state:2"}, state: "vigil-state",
			want: map[string]int{"agent-events": 3, "vigil-state": 2, "agent-revocations": 3, "agent-events-dlq": 1}},
		{args: nil, state: "vigil-state",
			want: map[string]int{"agent-events": 6, "vigil-state": 6, "agent-revocations": 6, "agent-events-dlq": 1}},
		{args: []string{"--topic", "agent-events:4", "--topic", "extra:2"}, state: "vigil-state",
			want: map[string]int{"agent-events": 4, "extra": 2, "vigil-state": 4, "agent-revocations": 4, "agent-events-dlq": 1}},
		{args: []string{"--events-topic", "ev", "--state-topic", "st", "--topic", "ev:2", "--topic", "agent-events-dlq:3"}, state: "st",
			want: map[string]int{"ev": 2, "st": 2, "agent-revocations": 2, "agent-events-dlq": 3}},
	} {
		addr := startDevbroker(t, tc.args...)
		tr := &kafka.Transport{}
		cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}
		md, err := cl.Metadata(context.Background(), &kafka.MetadataRequest{})
		if err != nil {
			t.Fatal(err)
		}
		n := map[string]int{}
		for _, topic := range md.Topics {
			n[topic.Name] = len(topic.Partitions)
		}
		if fmt.Sprint(n) != fmt.Sprint(tc.want) {
			t.Errorf("devbroker %v: topics %v, want %v", tc.args, n, tc.want)
		}
		for name := range tc.want {
			dc, err := cl.DescribeConfigs(context.Background(), &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
				ResourceType: kafka.ResourceTypeTopic, ResourceName: name, ConfigNames: []string{"cleanup.policy"}}}})
			if err != nil || len(dc.Resources) != 1 || len(dc.Resources[0].ConfigEntries) != 1 {
				t.Fatalf("devbroker %v: %s configs: %+v, %v", tc.args, name, dc, err)
			}
			want := "delete"
			if name == tc.state {
				want = "compact"
			}
			if got := dc.Resources[0].ConfigEntries[0].ConfigValue; got != want {
				t.Errorf("devbroker %v: %s has cleanup.policy=%s, want %s", tc.args, name, got, want)
			}
		}
		tr.CloseIdleConnections()
	}

	for _, bad := range [][]string{{"--topic", "agent-events"}, {"--topic", "a:0"}, {"--topic", "a b:1"}, {"--topic", "a:1", "--topic", "a:2"}, {"extra"},
		{"--state-topic", "agent-events"}, {"--events-topic", "a b"}} {
		var out, errb bytes.Buffer
		if err := runDevbroker(context.Background(), append([]string{"--listen", "127.0.0.1:0"}, bad...), &out, &errb); err == nil {
			t.Errorf("devbroker %v: no error", bad)
		}
	}
}

// vigil run against vigil devbroker: it becomes ready, reports rejected
// events with their reason on stderr, and on SIGTERM exits 0 with every
// offset committed.
func TestRunConsumesAndExitsCleanlyOnSIGTERM(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	addr := startDevbroker(t, "--topic", "agent-events:2")
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	var msgs []kafka.Message
	for i := range 40 {
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("spiffe://bank.example/agent/a%d", i%4)), Value: []byte(fmt.Sprintf(
			`{"event_id":"e%d","ts":"2026-03-02T10:%02d:00Z","agent_id":"spiffe://bank.example/agent/a%d","target_id":"svc","action":"get","decision":"allow"}`, i, i, i%4))})
	}
	msgs = append(msgs, kafka.Message{Key: []byte("x"), Value: []byte(`{"event_id":"bad"`)},
		kafka.Message{Key: []byte("y"), Value: []byte(`{"event_id":"e99","ts":"yesterday","agent_id":"a","target_id":"t","action":"x","decision":"allow"}`)})
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "agent-events", Transport: tr, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	w.Close()

	var stdout, stderr syncBuffer
	web, rc := startRun(t, addr, "cmd-test", &stdout, &stderr)
	get := webGet(web)
	if code, _ := get("/-/healthy"); code != 200 {
		t.Errorf("/-/healthy: %d", code)
	}
	waitFor(t, 20*time.Second, "/-/ready", func() bool { code, _ := get("/-/ready"); return code == 200 })
	waitFor(t, 20*time.Second, "two dead letters on stderr", func() bool { return strings.Count(stderr.String(), "dead-letter ") == 2 })
	for _, want := range []string{"reason=bad_json", "reason=bad_timestamp"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %s:\n%s", want, stderr.String())
		}
	}
	waitFor(t, 10*time.Second, "42 messages in /metrics", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `vigil_consumer_messages_total{partition="0"}`) && metricSum(body, "vigil_consumer_messages_total") == 42
	})
	_, body := get("/metrics")
	promtoolCheckMetrics(t, body)

	sigterm(t, rc, &stderr)
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr}
	resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: "cmd-test", Topics: map[string][]int{"agent-events": {0, 1}}})
	if err != nil {
		t.Fatal(err)
	}
	var committed int64
	for _, p := range resp.Topics["agent-events"] {
		committed += p.CommittedOffset
	}
	if committed != 42 {
		t.Errorf("committed offsets sum to %d, want 42: %+v", committed, resp.Topics)
	}
	if stdout.String() != "" && !strings.HasPrefix(stdout.String(), `{"alert_id":`) {
		t.Errorf("stdout is not alerts: %.200s", stdout.String())
	}
}

// webGet returns a GET of a path on web: status and body (the error's text
// as body when there is no response).
func webGet(web string) func(path string) (int, string) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	return func(path string) (int, string) {
		resp, err := client.Get(web + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

// sigterm sends SIGTERM to this process (where `vigil run` runs in-process)
// and waits for the run's exit code, which must be 0 within 20 s.
func sigterm(t *testing.T, rc <-chan int, stderr *syncBuffer) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-rc:
		if code != 0 {
			t.Fatalf("vigil run exited %d on SIGTERM:\n%s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("vigil run did not exit within 20s of SIGTERM")
	}
}

// startRun runs `vigil run` in-process against the broker at addr with the
// given consumer group, and returns its web address (from the log) and a
// channel that receives its exit code.
func startRun(t *testing.T, addr, group string, stdout, stderr *syncBuffer, extra ...string) (string, <-chan int) {
	t.Helper()
	rc := make(chan int, 1)
	args := append([]string{"run", "--kafka.brokers", addr, "--kafka.group", group, "--web.listen-address", "127.0.0.1:0"}, extra...)
	go func() { rc <- run(args, nil, stdout, stderr) }()
	var web string
	waitFor(t, 10*time.Second, "the web address in the log", func() bool {
		m := regexp.MustCompile(`web=(https?://\S+)`).FindStringSubmatch(stderr.String())
		if m != nil {
			web = m[1]
		}
		return m != nil
	})
	return web, rc
}

// promtoolCheckMetrics runs Prometheus's own linter on an exposition.
func promtoolCheckMetrics(t *testing.T, body string) {
	t.Helper()
	cmd := exec.Command(sinktest.Binary(t, "prometheus", "promtool"), "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// metricSum adds the values of a metric's series in Prometheus text format.
func metricSum(body, name string) float64 {
	var sum float64
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			var v float64
			if _, err := fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v); err == nil {
				sum += v
			}
		}
	}
	return sum
}

func TestRunRejectsBadFlagsAndConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		rc   int
		want string
	}{
		{[]string{"run", "--kafka.brokers", "nohost"}, 1, "kafka.brokers"},
		{[]string{"run", "--kafka.topic", "bad topic"}, 1, "kafka.topic"},
		{[]string{"run", "--config", writeFile(t, dir, "k.yaml", "kafka:\n  sasl:\n    mechanism: PLAIN\n    username: u\n    password: hunter2\n")}, 1, "password"},
		{[]string{"run", "--config", writeFile(t, dir, "s.yaml", "kafka:\n  sasl:\n    mechanism: PLAIN\n    username: u\n    password_env: VIGIL_TEST_NO_SUCH_VAR\n")}, 1, "VIGIL_TEST_NO_SUCH_VAR"},
		{[]string{"run", "--web.listen-address", "256.0.0.1:1"}, 1, "web.listen-address"},
		{[]string{"run", "stray"}, 2, "unexpected argument"},
		{[]string{"run", "--config", writeFile(t, dir, "r.yaml", "detector:\n  revocation:\n    enabled: true\noutputs:\n  revocations:\n    enabled: false\n")}, 1, "no output takes revocation requests"},
		{[]string{"run", "--config", writeFile(t, dir, "r2.yaml", "detector:\n  revocation:\n    enabled: true\n")}, 1, "vigil keygen"},
	} {
		var out, errb bytes.Buffer
		if rc := run(tc.args, nil, &out, &errb); rc != tc.rc || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: rc %d, stderr %q; want rc %d mentioning %s", tc.args, rc, errb.String(), tc.rc, tc.want)
		}
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := dir + "/" + name
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
