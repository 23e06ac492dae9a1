package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A client nobody here wrote (kcat, librdkafka) produces into the dev broker
// and vigil run consumes every message: valid events are scored, the broken
// one is reported as a dead letter with its reason.
func TestKcatProducesVigilConsumes(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat not found: install Debian's kcat package (make test does)")
	}
	addr := startDevbroker(t, "--topic", "agent-events:3")
	var in bytes.Buffer
	const n = 60
	for i := range n {
		agent := fmt.Sprintf("spiffe://bank.example/agent/kcat-%d", i%5)
		fmt.Fprintf(&in, "%s\t{\"event_id\":\"k%d\",\"ts\":\"2026-03-02T10:%02d:%02dZ\",\"agent_id\":%q,\"target_id\":\"svc\",\"action\":\"get\",\"decision\":\"allow\"}\n",
			agent, i, i/60, i%60, agent)
	}
	in.WriteString("broken\t{\"event_id\":\"k-bad\",\"ts\":\"2026-03-02T10:00:00Z\"\n")
	cmd := exec.Command(kcat, "-P", "-b", addr, "-t", "agent-events", "-K", "\t", "-X", "acks=all")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat: %v\n%s", err, out)
	}

	var stdout, stderr syncBuffer
	web, rc := startRun(t, addr, "kcat-test", &stdout, &stderr)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	waitFor(t, 30*time.Second, fmt.Sprintf("%d messages consumed", n+1), func() bool {
		resp, err := client.Get(web + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return metricSum(string(b), "vigil_consumer_messages_total") == n+1
	})
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		return strings.Contains(stderr.String(), "dead-letter ") && strings.Contains(stderr.String(), "reason=bad_json")
	})
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-rc:
		if code != 0 {
			t.Fatalf("vigil run exited %d:\n%s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("vigil run did not exit within 20s of SIGTERM")
	}
}
