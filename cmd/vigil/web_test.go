package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// /metrics and the health endpoints behind --web.config.file (the exporter
// toolkit's format): HTTPS with a certificate of a CA made in the test, a
// client certificate required, and basic auth with a bcrypt hash. Without
// credentials 401, with them 200, and promtool still parses /metrics; a
// client without a certificate, or speaking plain HTTP, gets nothing.
func TestRunWebConfigTLSAndBasicAuth(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	pki := sinktest.NewPKI(t, "vigil test CA")
	hash, err := bcrypt.GenerateFromPassword([]byte("scrape-s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	webConfig := writeFile(t, dir, "web.yml", "tls_server_config:\n  cert_file: "+pki.ServerCert+"\n  key_file: "+pki.ServerKey+
		"\n  client_ca_file: "+pki.CAFile+"\n  client_auth_type: RequireAndVerifyClientCert\nbasic_auth_users:\n  prometheus: "+string(hash)+"\n")
	addr := startDevbroker(t, "--topic", "agent-events:1")
	var stdout, stderr syncBuffer
	web, rc := startRun(t, addr, "web-test", &stdout, &stderr, "--web.config.file", webConfig)
	if !strings.HasPrefix(web, "https://") {
		t.Fatalf("web address %s, want https://", web)
	}
	tr := &http.Transport{TLSClientConfig: pki.ClientTLS(), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func(c *http.Client, url, user, pass string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for _, path := range []string{"/-/healthy", "/-/ready", "/metrics"} {
		for _, tc := range []struct {
			user, pass string
			want       int
		}{{"", "", 401}, {"prometheus", "wrong", 401}, {"nobody", "scrape-s3cret", 401}} {
			if code, _, err := get(client, web+path, tc.user, tc.pass); err != nil || code != tc.want {
				t.Errorf("%s as %q/%q: %d, %v; want %d", path, tc.user, tc.pass, code, err, tc.want)
			}
		}
	}
	if code, body, err := get(client, web+"/-/healthy", "prometheus", "scrape-s3cret"); err != nil || code != 200 {
		t.Errorf("/-/healthy with credentials: %d %q, %v", code, body, err)
	}
	waitFor(t, 20*time.Second, "/-/ready", func() bool {
		code, _, _ := get(client, web+"/-/ready", "prometheus", "scrape-s3cret")
		return code == 200
	})
	code, body, err := get(client, web+"/metrics", "prometheus", "scrape-s3cret")
	if err != nil || code != 200 || !strings.Contains(body, "vigil_") {
		t.Fatalf("/metrics with credentials: %d, %v\n%.300s", code, err, body)
	}
	promtoolCheckMetrics(t, body)

	// No client certificate, another CA, plain HTTP: no answer.
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}, Timeout: 5 * time.Second}
	if _, _, err := get(noCert, web+"/-/healthy", "prometheus", "scrape-s3cret"); err == nil {
		t.Error("a client without a certificate was served")
	}
	if _, _, err := get(&http.Client{Timeout: 5 * time.Second}, web+"/-/healthy", "prometheus", "scrape-s3cret"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without the CA: %v", err)
	}
	if code, _, err := get(&http.Client{Timeout: 5 * time.Second}, strings.Replace(web, "https:", "http:", 1)+"/metrics", "prometheus", "scrape-s3cret"); err == nil && code == 200 {
		t.Error("plain HTTP was served")
	}
	sigterm(t, rc, &stderr)
	if strings.Contains(stderr.String(), "scrape-s3cret") || strings.Contains(stderr.String(), string(hash)) {
		t.Errorf("the log shows the password or its hash:\n%s", stderr.String())
	}
}

// A web configuration file whose key other users may read, or that is
// invalid, stops vigil run at start-up with an error naming the file.
func TestRunWebConfigRefused(t *testing.T) {
	pki := sinktest.NewPKI(t, "vigil test CA")
	dir := t.TempDir()
	tlsLines := "tls_server_config:\n  cert_file: " + pki.ServerCert + "\n  key_file: " + filepath.Base(pki.ServerKey) + "\n"
	relative := filepath.Join(pki.Dir, "web.yml") // key_file relative to the file
	if err := os.WriteFile(relative, []byte(tlsLines), 0o600); err != nil {
		t.Fatal(err)
	}
	if on, err := checkWebConfig(relative); err != nil || !on {
		t.Fatalf("valid file: TLS %v, %v", on, err)
	}
	if err := os.Chmod(pki.ServerKey, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file string
		want []string
		mode bool
	}{
		{relative, []string{"tls_server_config.key_file", pki.ServerKey, "chmod 600 " + pki.ServerKey}, true},
		{writeFile(t, dir, "badhash.yml", "basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n"), []string{"badhash.yml"}, false},
		{writeFile(t, dir, "unknown.yml", "tls_server_config:\n  cert_fil: x\n"), []string{"unknown.yml", "cert_fil"}, false},
		{writeFile(t, dir, "auth.yml", "tls_server_config:\n  cert_file: "+pki.ClientCert+"\n  key_file: "+pki.ClientKey+"\n  client_auth_type: Sometimes\n"), []string{"auth.yml", "Sometimes"}, false},
		{filepath.Join(dir, "missing.yml"), []string{"missing.yml"}, false},
	} {
		var out, errb bytes.Buffer
		rc := run([]string{"run", "--web.listen-address", "127.0.0.1:0", "--web.config.file", tc.file}, nil, &out, &errb)
		if rc != 1 {
			t.Errorf("%s: rc %d, want 1\n%s", tc.file, rc, errb.String())
		}
		for _, w := range tc.want {
			if !strings.Contains(errb.String(), w) {
				t.Errorf("%s: %q lacks %q", tc.file, errb.String(), w)
			}
		}
		if _, err := checkWebConfig(tc.file); errors.Is(err, detector.ErrSecretFileMode) != tc.mode {
			t.Errorf("%s: %v: ErrSecretFileMode %v, want %v", tc.file, err, !tc.mode, tc.mode)
		}
	}
}
