package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/httpauth"
)

// Name is the sink's name (detector.Sink.Name).
const Name = "webhook"

// Request headers vigil sets (configured Headers may not override them).
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderSignature      = "X-Vigil-Signature"
	HeaderKeyID          = "X-Vigil-Key-Id"
)

// Config configures the webhook. Start from DefaultConfig. Secrets are
// never fields of this struct: they are read from the files named here.
type Config struct {
	// URL receives the POSTs: http or https, without credentials (use
	// BearerTokenFile or BasicAuth). Required.
	URL string `yaml:"url"`
	// Timeout bounds one request, response included. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// BearerTokenFile holds a token sent as "Authorization: Bearer <token>"
	// (trailing newline ignored; re-read for every request). Default none.
	BearerTokenFile string `yaml:"bearer_token_file"`
	// BasicAuth sends HTTP basic auth. Default none; not with
	// BearerTokenFile.
	BasicAuth BasicAuth `yaml:"basic_auth"`
	// TLS for https URLs. Default: the system roots, no client certificate.
	TLS TLSConfig `yaml:"tls"`
	// Headers are extra request headers, for routing (not secrets: they are
	// in the configuration file). They may not set Authorization,
	// Content-Type, Content-Length, Host, Idempotency-Key or X-Vigil-*.
	Headers map[string]string `yaml:"headers"`
}

// BasicAuth and TLSConfig are shared with the other HTTP sinks. The
// password file is read again for every request.
type (
	BasicAuth = httpauth.BasicAuth
	TLSConfig = httpauth.TLSConfig
)

// DefaultConfig returns the defaults (URL must still be set).
func DefaultConfig() Config { return Config{Timeout: 10 * time.Second} }

// reserved are the headers vigil sets itself (canonical form).
var reserved = map[string]bool{
	"Authorization": true, "Content-Type": true, "Content-Length": true, "Host": true,
	"Transfer-Encoding": true, "Connection": true, HeaderIdempotencyKey: true,
}

// Validate reports the first invalid field, named relative to this struct
// (url, basic_auth.username, ...). It does not read the files.
func (c Config) Validate() error {
	bad := func(field, msg string) error { return &detector.ConfigError{Field: field, Msg: msg} }
	if c.URL == "" {
		return bad("url", "required")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return bad("url", "not a URL") // the parse error would repeat the URL
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("url", "want an http:// or https:// URL")
	case u.Host == "":
		return bad("url", "no host")
	case u.User != nil:
		return bad("url", "credentials in the URL would end up in logs: use bearer_token_file or basic_auth")
	case c.Timeout <= 0:
		return bad("timeout", "must be > 0")
	case c.BearerTokenFile != "" && (c.BasicAuth.Username != "" || c.BasicAuth.PasswordFile != ""):
		return bad("bearer_token_file", "set bearer_token_file or basic_auth, not both")
	case (c.BasicAuth.Username == "") != (c.BasicAuth.PasswordFile == ""):
		return bad("basic_auth.password_file", "basic_auth needs both username and password_file (the password is never taken from this file)")
	case strings.ContainsAny(c.BasicAuth.Username, ":\r\n"):
		return bad("basic_auth.username", "may not contain ':' or line breaks")
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return bad("tls.cert_file", "cert_file and key_file go together")
	case u.Scheme == "http" && c.TLS != TLSConfig{}:
		return bad("tls", "TLS options are set but the URL is http://")
	}
	for k, v := range c.Headers {
		ck := http.CanonicalHeaderKey(k)
		switch {
		case k == "" || strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) }):
			return bad("headers", fmt.Sprintf("%q is not a header name", k))
		case reserved[ck] || strings.HasPrefix(ck, "X-Vigil-"):
			return bad("headers", fmt.Sprintf("%s is set by vigil (credentials go in bearer_token_file or basic_auth)", ck))
		case strings.ContainsAny(v, "\r\n\x00"):
			return bad("headers", fmt.Sprintf("the value of %s contains a line break", ck))
		}
	}
	return nil
}

// Sink POSTs revocation requests to a webhook. It is safe for concurrent
// use; Close releases its idle connections.
type Sink struct {
	cfg     Config
	url     string
	where   string // the URL without its query, for errors
	headers http.Header
	client  *http.Client
	tr      *http.Transport
	acked   *recent
	codes   *prometheus.CounterVec
}

var _ detector.Sink = (*Sink)(nil)

// New returns a webhook Sink for cfg. It reads the TLS files, and checks that
// the secret files are readable and not empty, so a missing file fails at
// startup. reg (nil: not registered) gets vigil_webhook_responses_total.
func New(cfg Config, reg prometheus.Registerer) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	u, _ := url.Parse(cfg.URL)
	where := u.Scheme + "://" + u.Host + u.EscapedPath()
	s := &Sink{cfg: cfg, url: cfg.URL, where: where, headers: make(http.Header), acked: newRecent(4096)}
	for k, v := range cfg.Headers {
		s.headers.Set(k, v)
	}
	if _, _, err := s.credentials(); err != nil {
		return nil, err
	}
	var tc *tls.Config
	if u.Scheme == "https" {
		var err error
		if tc, err = cfg.TLS.Config(); err != nil {
			return nil, fmt.Errorf("webhook: %w", err)
		}
	}
	s.tr = &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16, // partition workers write concurrently
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: cfg.Timeout,
	}
	s.client = &http.Client{
		Transport: s.tr,
		Timeout:   cfg.Timeout,
		// A redirect would re-send the request elsewhere: report it instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	s.codes = promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_webhook_responses_total",
		Help: "Webhook POSTs by outcome: the status class (2xx, 3xx, 4xx, 5xx), or 408, 409, 429, or error (no response).",
	}, []string{"code"})
	return s, nil
}

// Name returns "webhook".
func (s *Sink) Name() string { return Name }

// Write POSTs the batch's revocation requests one after the other, in
// order, and returns when the receiver has acknowledged all of them or at
// the first failure (so one agent's requests are never acknowledged out of
// order). Requests acknowledged by an earlier attempt at the same batch are
// not sent again. Safe for concurrent use.
func (s *Sink) Write(ctx context.Context, b detector.Batch) error {
	for _, rv := range b.Revocations {
		if s.acked.has(rv.RequestID) {
			continue
		}
		if err := s.post(ctx, rv); err != nil {
			return err
		}
		s.acked.add(rv.RequestID)
	}
	return nil
}

// Close releases idle connections. Write must not be called after Close.
func (s *Sink) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}

// maxSnippet bounds the part of an error response's body quoted in errors.
const maxSnippet = 256

func (s *Sink) post(ctx context.Context, rv *detector.Revocation) error {
	if len(rv.Body) == 0 || rv.Signature == "" {
		return fmt.Errorf("webhook: revocation request %s is not signed (no Body): %w", rv.RequestID, detector.ErrPermanent)
	}
	token, pass, err := s.credentials()
	if err != nil {
		return err // the file vanished: perhaps being rotated; retry
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(rv.Body))
	if err != nil {
		return fmt.Errorf("webhook: POST %s: %w", s.where, detector.ErrPermanent)
	}
	for k, v := range s.headers {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil")
	req.Header.Set(HeaderIdempotencyKey, rv.RequestID)
	req.Header.Set(HeaderSignature, rv.Signature)
	req.Header.Set(HeaderKeyID, rv.KeyID)
	switch {
	case token != "":
		req.Header.Set("Authorization", "Bearer "+token)
	case s.cfg.BasicAuth.Username != "":
		req.SetBasicAuth(s.cfg.BasicAuth.Username, pass)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.codes.WithLabelValues("error").Inc()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the same error without the URL (and its query)
		}
		if !detector.IsTLSConfigError(err) && ctx.Err() == nil {
			if terr := httpauth.DiagnoseTLS(ctx, s.url, s.tr.TLSClientConfig); terr != nil {
				err = fmt.Errorf("%w (after: %v)", terr, err)
			}
		}
		if detector.IsTLSConfigError(err) {
			// Certificates that do not verify (or a server that does not
			// speak TLS) fail the same way every time: stop, do not retry.
			return fmt.Errorf("webhook: POST %s: request %s: TLS: %w: %s: %w", s.where, rv.RequestID, err, detector.TLSConfigFix("webhook.tls", err), detector.ErrPermanent)
		}
		return fmt.Errorf("webhook: POST %s: request %s: %w", s.where, rv.RequestID, err)
	}
	defer resp.Body.Close()
	code := resp.StatusCode
	var snippet []byte
	if code/100 != 2 {
		// Read well past what is quoted, so that a secret the receiver
		// echoes is redacted whole before the quote is cut.
		snippet, _ = io.ReadAll(io.LimitReader(resp.Body, 16*maxSnippet))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // reuse the connection
	label := strconv.Itoa(code/100) + "xx"
	switch code {
	case http.StatusRequestTimeout, http.StatusConflict, http.StatusTooManyRequests:
		label = strconv.Itoa(code)
	}
	s.codes.WithLabelValues(label).Inc()
	switch {
	case code/100 == 2, code == http.StatusConflict:
		return nil
	}
	msg := fmt.Sprintf("webhook: POST %s: request %s: %s", s.where, rv.RequestID, resp.Status)
	if ra := resp.Header.Get("Retry-After"); ra != "" && len(ra) < 64 {
		msg += " (Retry-After " + ra + ")"
	}
	if loc := resp.Header.Get("Location"); code/100 == 3 && loc != "" {
		msg += ": redirected; point url at the final address"
	}
	secrets := []string{token, pass}
	if pass != "" {
		secrets = append(secrets, base64.StdEncoding.EncodeToString([]byte(s.cfg.BasicAuth.Username+":"+pass)))
	}
	if q := quote(snippet, secrets...); q != "" {
		msg += ": " + q
	}
	switch {
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code/100 == 5:
		return errors.New(msg)
	}
	return fmt.Errorf("%s: %w", msg, detector.ErrPermanent)
}

// credentials reads the bearer token or the basic-auth password.
func (s *Sink) credentials() (token, pass string, err error) {
	read := func(field, file string) (string, error) {
		b, err := detector.ReadSecretFile(field, file)
		if err != nil {
			return "", fmt.Errorf("webhook: %w", err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("webhook: %s: %s is empty", field, file)
		}
		if strings.ContainsAny(v, "\r\n") {
			return "", fmt.Errorf("webhook: %s: %s holds more than one line", field, file)
		}
		return v, nil
	}
	if f := s.cfg.BearerTokenFile; f != "" {
		token, err = read("bearer_token_file", f)
	}
	if f := s.cfg.BasicAuth.PasswordFile; f != "" {
		pass, err = read("basic_auth.password_file", f)
	}
	return token, pass, err
}

// quote renders the start of an error response's body (at most maxSnippet
// bytes of it) for an error message: printable text only, with the secrets
// blanked out in case the receiver echoes the request.
func quote(body []byte, secrets ...string) string {
	s := strings.ToValidUTF8(string(body), "?")
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	if len(s) > maxSnippet {
		cut := maxSnippet
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	s = strings.TrimSpace(s)
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if s == "" {
		return ""
	}
	return strconv.Quote(s)
}

// recent is a bounded set of request ids, forgetting the oldest first.
type recent struct {
	mu   sync.Mutex
	ids  map[string]struct{}
	ring []string
	next int
}

func newRecent(n int) *recent {
	return &recent{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (r *recent) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ids[id]
	return ok
}

func (r *recent) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.ids[id]; ok {
		return
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.ids, old)
	}
	r.ring[r.next] = id
	r.ids[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}
