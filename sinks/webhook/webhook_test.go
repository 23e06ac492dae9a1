package webhook

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/models"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

func testSigner(t *testing.T) *detector.Signer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := detector.NewSigner("vigil-test-1", key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func revocation(t *testing.T, s *detector.Signer, agent string, n int) *detector.Revocation {
	t.Helper()
	ws := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC).Add(time.Duration(n) * 5 * time.Minute)
	alertID := fmt.Sprintf("alert-%s-%d", agent, n)
	rv := &detector.Revocation{
		RequestID: detector.RequestID(alertID, detector.ActionRevoke), AlertID: alertID,
		AgentID: agent, AgentClass: "payments", WindowStart: ws, WindowEnd: ws.Add(5 * time.Minute),
		DetectedAt: ws.Add(5 * time.Minute), Score: 98, Severity: detector.SeverityCritical, Kind: "behavior",
		Reasons:  []models.Reason{{Feature: "distinct_targets", Value: 41, Expected: 3, Z: 9.1, Contribution: 1}},
		Baseline: detector.Baseline{Source: models.SourceAgent, Windows: 288}, CredentialID: "cred-" + agent,
		Action: detector.ActionRevoke, Mode: detector.ModeEnforce, Why: "policy", ExpiresAt: ws.Add(time.Hour),
	}
	if err := s.Sign(rv); err != nil {
		t.Fatal(err)
	}
	return rv
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// receiver is the policy engine's end of the webhook: it checks the
// headers, verifies the signature with detector.VerifyRevocation and
// deduplicates by Idempotency-Key. fail, when set, answers a request
// instead (status, or 0 to let it through).
type receiver struct {
	t        *testing.T
	keys     map[string]ed25519.PublicKey
	wantAuth func(*http.Request) bool
	fail     func(key string, attempt int) int

	mu       sync.Mutex
	attempts map[string]int    // Idempotency-Key → requests seen
	applied  []string          // request ids acted on, once each
	headers  []http.Header     // every request's headers
	bodies   map[string][]byte // request id → body
}

func newReceiver(t *testing.T, s *detector.Signer) *receiver {
	return &receiver{t: t, keys: map[string]ed25519.PublicKey{s.KeyID: s.Public()},
		attempts: map[string]int{}, bodies: map[string][]byte{}}
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Header.Get("Idempotency-Key")
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.attempts[key]++
	rc.headers = append(rc.headers, r.Header.Clone())
	if rc.fail != nil {
		if code := rc.fail(key, rc.attempts[key]); code != 0 {
			w.WriteHeader(code)
			return
		}
	}
	if rc.wantAuth != nil && !rc.wantAuth(r) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		rc.t.Errorf("%s with Content-Type %q", r.Method, r.Header.Get("Content-Type"))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	rv, err := detector.VerifyRevocation(body, rc.keys)
	if err != nil {
		rc.t.Errorf("verify: %v", err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if key != rv.RequestID || r.Header.Get("X-Vigil-Signature") != rv.Signature || r.Header.Get("X-Vigil-Key-Id") != rv.KeyID {
		rc.t.Errorf("headers %v do not match request %s", r.Header, rv.RequestID)
	}
	if _, dup := rc.bodies[key]; dup {
		w.WriteHeader(http.StatusConflict) // already have it
		return
	}
	rc.bodies[key] = body
	rc.applied = append(rc.applied, key)
	w.WriteHeader(http.StatusAccepted)
}

func newSink(t *testing.T, cfg Config) *Sink {
	t.Helper()
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func config(url string) Config {
	c := DefaultConfig()
	c.URL = url
	c.Timeout = 2 * time.Second
	return c
}

// Requests arrive signed, with the headers, in order; a redelivered batch
// is answered 409 and counts as delivered.
func TestDelivers(t *testing.T) {
	signer := testSigner(t)
	rc := newReceiver(t, signer)
	rc.wantAuth = func(r *http.Request) bool { return r.Header.Get("Authorization") == "Bearer tok-1" }
	srv := httptest.NewServer(rc)
	defer srv.Close()
	cfg := config(srv.URL + "/v1/revocations")
	cfg.BearerTokenFile = writeFile(t, "token", "tok-1\n")
	cfg.Headers = map[string]string{"X-Tenant": "bank-eu"}
	s := newSink(t, cfg)
	if s.Name() != "webhook" {
		t.Errorf("Name %q", s.Name())
	}
	var rvs []*detector.Revocation
	for i := range 5 {
		rvs = append(rvs, revocation(t, signer, "spiffe://bank.example/agent/a", i))
	}
	if err := s.Write(context.Background(), detector.Batch{Revocations: rvs, Alerts: []*detector.Alert{{}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), detector.Batch{Windows: make([]detector.WindowRecord, 3)}); err != nil {
		t.Errorf("a batch without revocations: %v", err)
	}
	// Another vigil instance (no memory of what was acknowledged) sends
	// them again: the receiver says it has them, which is success.
	s2 := newSink(t, cfg)
	if err := s2.Write(context.Background(), detector.Batch{Revocations: rvs}); err != nil {
		t.Errorf("redelivery: %v", err)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.applied) != len(rvs) {
		t.Fatalf("applied %d requests, want %d", len(rc.applied), len(rvs))
	}
	for i, rv := range rvs {
		if rc.applied[i] != rv.RequestID || string(rc.bodies[rv.RequestID]) != string(rv.Body) {
			t.Errorf("request %d: got %s, want %s with its signed body", i, rc.applied[i], rv.RequestID)
		}
	}
	for _, h := range rc.headers {
		if h.Get("X-Tenant") != "bank-eu" {
			t.Errorf("configured header missing: %v", h)
		}
	}
}

// A receiver failing twice then succeeding sees the same Idempotency-Key
// each time; the two failures are retriable errors for the caller.
func TestRetriesKeepTheKey(t *testing.T) {
	signer := testSigner(t)
	rc := newReceiver(t, signer)
	rc.fail = func(_ string, attempt int) int {
		if attempt <= 2 {
			return []int{http.StatusServiceUnavailable, http.StatusTooManyRequests}[attempt-1]
		}
		return 0
	}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	reg := prometheus.NewPedanticRegistry()
	s, err := New(config(srv.URL), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0)}}
	for attempt := 1; ; attempt++ {
		err := s.Write(context.Background(), b)
		if err == nil {
			if attempt != 3 {
				t.Errorf("delivered at attempt %d, want 3", attempt)
			}
			break
		}
		if errors.Is(err, detector.ErrPermanent) || attempt == 3 {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	id := b.Revocations[0].RequestID
	if rc.attempts[id] != 3 || len(rc.attempts) != 1 {
		t.Errorf("receiver saw keys %v; want %s three times", rc.attempts, id)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "vigil_webhook_responses_total" {
			for _, m := range mf.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if want := map[string]float64{"5xx": 1, "429": 1, "2xx": 1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("vigil_webhook_responses_total by code: %v, want %v", got, want)
	}
}

// A batch that fails part-way is retried from where it failed: what the
// receiver acknowledged is not sent again, and nothing after the failure
// was sent before it.
func TestPartialBatch(t *testing.T) {
	signer := testSigner(t)
	rvs := []*detector.Revocation{revocation(t, signer, "a", 0), revocation(t, signer, "a", 1), revocation(t, signer, "a", 2)}
	rc := newReceiver(t, signer)
	rc.fail = func(key string, attempt int) int {
		if key == rvs[1].RequestID && attempt == 1 {
			return http.StatusBadGateway
		}
		return 0
	}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	s := newSink(t, config(srv.URL))
	b := detector.Batch{Revocations: rvs}
	if err := s.Write(context.Background(), b); err == nil || errors.Is(err, detector.ErrPermanent) {
		t.Fatalf("first attempt: %v", err)
	}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for i, want := range []int{1, 2, 1} {
		if got := rc.attempts[rvs[i].RequestID]; got != want {
			t.Errorf("request %d sent %d times, want %d", i, got, want)
		}
	}
	if len(rc.applied) != 3 || rc.applied[0] != rvs[0].RequestID || rc.applied[1] != rvs[1].RequestID {
		t.Errorf("applied out of order: %v", rc.applied)
	}
}

// Statuses: 2xx and 409 deliver; 408, 429 and 5xx are retriable; other
// 4xx and redirects are permanent. Errors never carry the secrets.
func TestStatuses(t *testing.T) {
	signer := testSigner(t)
	const token = "s3cr3t-t0ken-value"
	for _, tc := range []struct {
		code          int
		ok, permanent bool
	}{
		{200, true, false}, {201, true, false}, {202, true, false}, {204, true, false}, {409, true, false},
		{408, false, false}, {429, false, false}, {500, false, false}, {502, false, false}, {503, false, false}, {504, false, false},
		{400, false, true}, {401, false, true}, {403, false, true}, {404, false, true}, {413, false, true}, {422, false, true},
		{301, false, true}, {302, false, true}, {307, false, true},
	} {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.code/100 == 3 {
					w.Header().Set("Location", "https://elsewhere.example/")
				}
				w.WriteHeader(tc.code)
				// A careless receiver echoing the request.
				fmt.Fprintf(w, "rejected: Authorization: %s\r\n", r.Header.Get("Authorization"))
			}))
			defer srv.Close()
			cfg := config(srv.URL + "/hook?sig=query-secret")
			cfg.BearerTokenFile = writeFile(t, "token", token)
			s := newSink(t, cfg)
			err := s.Write(context.Background(), detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0)}})
			switch {
			case tc.ok && err != nil:
				t.Errorf("Write: %v; want delivered", err)
			case !tc.ok && (err == nil || errors.Is(err, detector.ErrPermanent) != tc.permanent):
				t.Errorf("Write: %v; want an error, permanent %v", err, tc.permanent)
			case err != nil && (strings.Contains(err.Error(), token) || strings.Contains(err.Error(), "query-secret")):
				t.Errorf("the error leaks a secret: %v", err)
			case err != nil && !strings.Contains(err.Error(), fmt.Sprint(tc.code)):
				t.Errorf("the error does not say the status: %v", err)
			}
			if err != nil {
				t.Log(err)
			}
		})
	}
}

// No response (the receiver is down, or slow past the timeout) is
// retriable, and the error names neither the query nor the credentials.
func TestNetworkErrors(t *testing.T) {
	signer := testSigner(t)
	b := detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0)}}

	srv := httptest.NewServer(http.NotFoundHandler())
	down := srv.URL
	srv.Close()
	cfg := config(down + "/hook?token=query-secret")
	cfg.BasicAuth = BasicAuth{Username: "vigil", PasswordFile: writeFile(t, "pass", "hunter2-password\n")}
	err := newSink(t, cfg).Write(context.Background(), b)
	if err == nil || errors.Is(err, detector.ErrPermanent) || strings.Contains(err.Error(), "query-secret") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("receiver down: %v; want a retriable error without secrets", err)
	}

	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer slow.Close()
	defer close(release)
	cfg = config(slow.URL)
	cfg.Timeout = 100 * time.Millisecond
	if err := newSink(t, cfg).Write(context.Background(), b); err == nil || errors.Is(err, detector.ErrPermanent) {
		t.Errorf("receiver slower than the timeout: %v; want a retriable error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := newSink(t, config(slow.URL)).Write(ctx, b); !errors.Is(err, context.Canceled) {
		t.Errorf("ended context: %v", err)
	}
}

// Basic auth and the bearer token are read from their files for every
// request: a rotated secret is used without a restart.
func TestSecretsFromFiles(t *testing.T) {
	signer := testSigner(t)
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		mu.Lock()
		seen = append(seen, fmt.Sprint(u, ":", p, ":", ok))
		mu.Unlock()
	}))
	defer srv.Close()
	pass := writeFile(t, "pass", "first\n")
	cfg := config(srv.URL)
	cfg.BasicAuth = BasicAuth{Username: "vigil", PasswordFile: pass}
	s := newSink(t, cfg)
	if err := s.Write(context.Background(), detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0)}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pass, []byte("second"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 1)}}); err != nil {
		t.Fatal(err)
	}
	if want := "vigil:first:true vigil:second:true"; strings.Join(seen, " ") != want {
		t.Errorf("credentials seen %v, want %s", seen, want)
	}

	for name, cfg := range map[string]Config{
		"missing token file": {URL: srv.URL, Timeout: time.Second, BearerTokenFile: filepath.Join(t.TempDir(), "nope")},
		"empty token file":   {URL: srv.URL, Timeout: time.Second, BearerTokenFile: writeFile(t, "empty", "\n")},
	} {
		if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "bearer_token_file") {
			t.Errorf("%s: New: %v", name, err)
		}
	}
}

// https with a CA made in the test, to a receiver that requires and
// verifies a client certificate signed by it (mTLS). A receiver vigil does
// not trust, or one that refuses vigil's certificate (or its absence), is
// a configuration error: Write fails at once with a permanent error that
// says which settings to check, instead of retrying a handshake that fails
// the same way every time (vigil stops; fix the files, restart).
func TestTLS(t *testing.T) {
	signer := testSigner(t)
	pki := sinktest.NewPKI(t, "vigil test CA")
	other := sinktest.NewPKI(t, "another CA")
	var peer string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer = r.TLS.PeerCertificates[0].Subject.CommonName
	}))
	srv.TLS = pki.ServerTLS()
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes below
	srv.StartTLS()
	defer srv.Close()
	cfg := config(srv.URL)
	cfg.TLS = TLSConfig{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	b := detector.Batch{Revocations: []*detector.Revocation{revocation(t, signer, "a", 0)}}
	if err := newSink(t, cfg).Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if peer != "vigil" {
		t.Errorf("server saw client certificate %q, want vigil's", peer)
	}
	for _, tc := range []struct {
		name string
		tls  TLSConfig
		want string
	}{
		{"no CA (system roots)", TLSConfig{CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "vigil does not trust the server's certificate: check webhook.tls.ca_file"},
		{"the wrong CA", TLSConfig{CAFile: other.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "certificate signed by unknown authority"},
		{"no client certificate", TLSConfig{CAFile: pki.CAFile}, "the server refused vigil's client certificate, or its absence"},
		{"a client certificate of another CA", TLSConfig{CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey}, "check webhook.tls.cert_file"},
	} {
		c := cfg
		c.TLS = tc.tls
		err := newSink(t, c).Write(context.Background(), b)
		if !errors.Is(err, detector.ErrPermanent) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want a permanent error saying %q", tc.name, err, tc.want)
		}
	}
	cfg.TLS.CAFile = writeFile(t, "bad.pem", "not a certificate")
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "tls.ca_file") {
		t.Errorf("bad CA file: %v", err)
	}
	cfg.TLS.CAFile = pki.CAFile
	os.Chmod(pki.ClientKey, 0o644)
	if _, err := New(cfg, nil); !errors.Is(err, detector.ErrSecretFileMode) || !strings.Contains(err.Error(), "tls.key_file") {
		t.Errorf("client key readable by others: %v", err)
	}
	pass := writeFile(t, "pass", "pw")
	os.Chmod(pass, 0o604)
	if _, err := New(Config{URL: srv.URL, Timeout: time.Second, BasicAuth: BasicAuth{Username: "u", PasswordFile: pass}}, nil); !errors.Is(err, detector.ErrSecretFileMode) || !strings.Contains(err.Error(), "basic_auth.password_file") {
		t.Errorf("password file readable by others: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"url", func(c *Config) { c.URL = "" }},
		{"url", func(c *Config) { c.URL = "ftp://x/y" }},
		{"url", func(c *Config) { c.URL = "https:///path" }},
		{"url", func(c *Config) { c.URL = "https://user:pw@host/" }},
		{"timeout", func(c *Config) { c.Timeout = 0 }},
		{"bearer_token_file", func(c *Config) { c.BearerTokenFile = "t"; c.BasicAuth = BasicAuth{Username: "u", PasswordFile: "p"} }},
		{"basic_auth.password_file", func(c *Config) { c.BasicAuth.Username = "u" }},
		{"basic_auth.username", func(c *Config) { c.BasicAuth = BasicAuth{Username: "u:x", PasswordFile: "p"} }},
		{"tls.cert_file", func(c *Config) { c.TLS.CertFile = "c" }},
		{"tls", func(c *Config) { c.URL = "http://h/"; c.TLS.InsecureSkipVerify = true }},
		{"headers", func(c *Config) { c.Headers = map[string]string{"authorization": "Bearer x"} }},
		{"headers", func(c *Config) { c.Headers = map[string]string{"X-Vigil-Key-Id": "k"} }},
		{"headers", func(c *Config) { c.Headers = map[string]string{"Idempotency-Key": "k"} }},
		{"headers", func(c *Config) { c.Headers = map[string]string{"Bad Name": "v"} }},
		{"headers", func(c *Config) { c.Headers = map[string]string{"X-Ok": "a\r\nb"} }},
	} {
		cfg := DefaultConfig()
		cfg.URL = "https://policy.example/revocations"
		tc.edit(&cfg)
		var ce *detector.ConfigError
		if err := cfg.Validate(); !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("%s: Validate: %v", tc.field, err)
		} else if strings.Contains(err.Error(), "pw@") {
			t.Errorf("the error repeats the URL's credentials: %v", err)
		}
	}
	cfg := DefaultConfig()
	cfg.URL = "https://policy.example/revocations"
	cfg.Headers = map[string]string{"X-Tenant": "eu"}
	if err := cfg.Validate(); err != nil {
		t.Errorf("valid: %v", err)
	}
}

func TestRecent(t *testing.T) {
	r := newRecent(3)
	for _, id := range []string{"a", "b", "c", "a", "d"} {
		r.add(id)
	}
	for id, want := range map[string]bool{"a": false, "b": true, "c": true, "d": true, "e": false} {
		if r.has(id) != want {
			t.Errorf("has(%s) = %v, want %v", id, !want, want)
		}
	}
}
