package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/sim"
)

// At the default log level (info) the log holds no secret and no event
// payload. vigil run sends alerts to an Alertmanager with basic auth (the
// password from a file), which first answers 500 echoing the credentials
// (so the retry warnings carry its message); among the events are
// invalid ones (bad JSON, a bad value) and a valid one with an unknown
// field, each carrying a marker. The log lines show neither the password
// (plain or base64) nor a marker. The dead-letter lines that share stderr
// (the stdout sink, not the log) show each rejected message's key, size,
// SHA-256 and reason, never its value.
func TestRunLogsNoSecretsOrPayloads(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	const password, marker = "hunter2-Pa55-for-the-log-test", "PAYLOAD-MARKER-"
	b64 := base64.StdEncoding.EncodeToString([]byte("vigil:" + password))
	var mu sync.Mutex
	var posts, authorized int
	am := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		posts++
		if u, p, ok := r.BasicAuth(); ok && u == "vigil" && p == password {
			authorized++
		}
		if posts <= 2 {
			http.Error(w, "overloaded; you sent "+r.Header.Get("Authorization")+" ("+password+")", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer am.Close()

	addr := startDevbroker(t, "--topic", "agent-events:1")
	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Seed = 12, 3, 2, 3, 5
	msgs := simMessages(t, cfg)
	valid := msgs[len(msgs)/2].Value
	withNote := append([]byte(`{"note":"`+marker+`3",`), bytes.TrimPrefix(valid, []byte("{"))...)
	poison := []kafka.Message{
		{Key: []byte("k-bad-json"), Value: []byte(`{"event_id":"` + marker + `1","ts":`)},
		{Key: []byte("k-bad-value"), Value: []byte(`{"event_id":"e-bad","ts":"2026-03-02T10:00:00Z","agent_id":"a","target_id":"t","action":"` + marker + `2","decision":"maybe"}`)},
		{Key: msgs[len(msgs)/2].Key, Value: withNote},
	}
	at := len(msgs) * 3 / 4
	msgs = append(msgs[:at:at], append(poison, msgs[at:]...)...)
	produce(t, addr, msgs, 0)

	dir := t.TempDir()
	pw := writeFile(t, dir, "am-password", password+"\n")
	conf := writeFile(t, dir, "vigil.yaml", fmt.Sprintf(`
kafka:
  checkpoint_interval: 300ms
  flush_interval: 200ms
  retry_backoff: 50ms
  max_retry_backoff: 200ms
outputs:
  dead_letters:
    enabled: false
  alertmanager:
    urls: [%q]
    basic_auth:
      username: vigil
      password_file: %s
`, am.URL, pw))
	stdout, stderr, _ := runToEnd(t, addr, "logs-test", 1, len(msgs), "--config", conf)

	mu.Lock()
	if posts <= 2 || authorized != posts {
		t.Errorf("Alertmanager got %d posts, %d with the password; want more than 2, all with it", posts, authorized)
	}
	mu.Unlock()
	var logLines, deadLetters []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		switch {
		case l == "":
		case strings.HasPrefix(l, "dead-letter "):
			deadLetters = append(deadLetters, l)
		default:
			logLines = append(logLines, l)
		}
	}
	logs := strings.Join(logLines, "\n")
	for _, secret := range []string{password, b64, marker} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log shows %q:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs, "sink write failed") || !strings.Contains(logs, "[redacted]") {
		t.Errorf("the log lacks the redacted retry warning:\n%s", logs)
	}
	if !strings.Contains(stdout.String(), `"alert_id"`) {
		t.Error("no alerts on stdout")
	}
	var rejected int
	for _, l := range deadLetters {
		if strings.Contains(l, marker) {
			t.Errorf("a dead-letter line shows the value: %s", l)
		}
		if strings.Contains(l, `key="k-bad-`) && strings.Contains(l, "value_sha256=") {
			rejected++
		}
	}
	if rejected != 2 {
		t.Errorf("%d dead-letter lines for the two invalid events, want 2:\n%s", rejected, strings.Join(deadLetters, "\n"))
	}
}
