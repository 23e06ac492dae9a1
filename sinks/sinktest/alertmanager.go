package sinktest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// alertmanagerConfig routes every alert to a receiver that notifies no one.
// Alerts show in the API as soon as they are posted whatever the grouping;
// one group per alertname keeps the dispatcher cheap with many alerts (a
// group per agent, flushed every second, slows Alertmanager down 2.5 times
// at 20,000 alerts).
const alertmanagerConfig = `route:
  receiver: "null"
  group_by: ["alertname"]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
`

// Alertmanager is a real Alertmanager (Debian's prometheus-alertmanager)
// on a loopback port, without clustering, stopped when the test ends. Its
// methods are not safe for concurrent use.
type Alertmanager struct {
	bin, amtool string
	args        []string
	url         string
	addr        string
	logFile     string
	client      *http.Client
	httpConfig  string // amtool's --http.config.file, with TLS

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartAlertmanager starts an Alertmanager with a null receiver, a config
// file and storage in t.TempDir() and a free loopback port, waits until it
// is ready, and stops it on t.Cleanup. It skips the test (fails it under
// CI) when prometheus-alertmanager is not installed.
func StartAlertmanager(t testing.TB) *Alertmanager {
	t.Helper()
	return startAlertmanager(t, nil)
}

// StartAlertmanagerTLS is StartAlertmanager serving HTTPS only, with
// pki's server certificate, and requiring a client certificate signed by
// pki's CA (--web.config.file: tls_server_config with client_auth_type
// RequireAndVerifyClientCert). Query and the readiness check present pki's
// client certificate.
func StartAlertmanagerTLS(t testing.TB, pki *PKI) *Alertmanager {
	t.Helper()
	return startAlertmanager(t, pki)
}

func startAlertmanager(t testing.TB, pki *PKI) *Alertmanager {
	t.Helper()
	bin := Binary(t, "prometheus-alertmanager", "prometheus-alertmanager", "alertmanager")
	amtool := Binary(t, "prometheus-alertmanager", "amtool")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(alertmanagerConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	am := &Alertmanager{
		bin: bin, amtool: amtool, addr: addr, url: "http://" + addr,
		logFile: filepath.Join(dir, "alertmanager.log"),
		args: []string{
			"--config.file=" + cfg,
			"--storage.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + addr,
			"--cluster.listen-address=",
			"--log.level=warn",
		},
		client: &http.Client{Timeout: time.Second},
	}
	if pki != nil {
		web := filepath.Join(dir, "web.yml")
		webConfig := fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n  client_ca_file: %s\n  client_auth_type: RequireAndVerifyClientCert\n",
			pki.ServerCert, pki.ServerKey, pki.CAFile)
		am.httpConfig = filepath.Join(dir, "amtool-http.yml")
		amtoolConfig := fmt.Sprintf("tls_config:\n  ca_file: %s\n  cert_file: %s\n  key_file: %s\n", pki.CAFile, pki.ClientCert, pki.ClientKey)
		for f, c := range map[string]string{web: webConfig, am.httpConfig: amtoolConfig} {
			if err := os.WriteFile(f, []byte(c), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		am.args = append(am.args, "--web.config.file="+web)
		am.url = "https://" + addr
		am.client.Transport = &http.Transport{TLSClientConfig: pki.ClientTLS()}
	}
	t.Cleanup(func() { am.stop() })
	am.Start(t)
	return am
}

// URL is the Alertmanager's base URL, e.g. http://127.0.0.1:40123
// (https:// with TLS).
func (am *Alertmanager) URL() string { return am.url }

// Start starts the Alertmanager (again, after Stop) on the same port and
// storage, and waits until it is ready. It does nothing if it is running.
// Alertmanager keeps alerts in memory only: a restarted one has none until
// they are sent again.
func (am *Alertmanager) Start(t testing.TB) {
	t.Helper()
	am.mu.Lock()
	defer am.mu.Unlock()
	if am.cmd != nil {
		return
	}
	log, err := os.OpenFile(am.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(am.bin, am.args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("start alertmanager: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(done) }()
	am.cmd, am.done = cmd, done
	if err := am.waitReady(done, 20*time.Second); err != nil {
		am.stopLocked()
		t.Fatalf("alertmanager on %s: %v\n%s", am.addr, err, am.logTail())
	}
}

// Stop stops the Alertmanager (SIGTERM, then SIGKILL after 10 s) and waits
// for it to exit. Its port stays reserved for Start in the sense that
// nothing else in the test uses it.
func (am *Alertmanager) Stop(t testing.TB) {
	t.Helper()
	am.stop()
}

func (am *Alertmanager) stop() {
	am.mu.Lock()
	defer am.mu.Unlock()
	am.stopLocked()
}

func (am *Alertmanager) stopLocked() {
	if am.cmd == nil {
		return
	}
	terminate(am.cmd, am.done)
	am.cmd, am.done = nil, nil
}

func (am *Alertmanager) waitReady(exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := am.client
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("exited before it was ready")
		default:
		}
		resp, err := c.Get(am.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v", timeout)
}

func (am *Alertmanager) logTail() string {
	b, _ := os.ReadFile(am.logFile)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// Query runs `amtool --alertmanager.url=URL alert query args...` and
// returns its standard output; it fails the test if amtool fails. Add
// "-o", "json" for output to parse; with no state flag amtool lists active
// alerts only (resolved ones are never listed).
func (am *Alertmanager) Query(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := []string{"--alertmanager.url=" + am.url}
	if am.httpConfig != "" {
		argv = append(argv, "--http.config.file="+am.httpConfig)
	}
	argv = append(append(argv, "alert", "query"), args...)
	cmd := exec.CommandContext(ctx, am.amtool, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("amtool %v: %v\n%s", argv, err, errb.String())
	}
	return out.String()
}
