package alertmanager

import (
	"bytes"
	"container/list"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/httpauth"
)

// maxPerPost bounds the alerts in one POST; larger sends (a re-send of
// many firing alerts) are split.
const maxPerPost = 1000

// Resolution reasons (the reason label of vigil_alertmanager_resolved_total).
const (
	reasonNormal     = "normal"     // a normal window of the agent
	reasonSuperseded = "superseded" // a newer alert of the agent and kind, other severity or class
	reasonExpired    = "expired"    // not refreshed for ResolveAfter
	reasonEvicted    = "evicted"    // MaxActive firing alerts
)

var reasons = []string{reasonNormal, reasonSuperseded, reasonExpired, reasonEvicted}

// Sink posts alerts to one or more Alertmanagers and resolves them; see the
// package documentation. Write is safe for concurrent use. Run (once, in
// its own goroutine) re-sends firing alerts until its context ends; Close
// ends the Sink after Run has returned. The Sink is a prometheus.Collector
// of its own metrics.
type Sink struct {
	cfg       Config
	log       *slog.Logger
	client    *http.Client
	transport *http.Transport
	targets   []*target
	now       func() time.Time // wall clock; tests replace it
	m         metrics

	mu       sync.Mutex
	byKey    map[string]*entry   // firing and recently resolved, by label set
	byAgent  map[string][]*entry // firing, by agent
	firing   list.List           // of *entry, least recently refreshed first
	resolved list.List           // of *entry, resolved, in order of resolution
	// resending is set while Run's re-send is in flight: alerts fired or
	// resolved meanwhile go to raced and are sent again, as they are, after
	// it, in case the re-send's older copy reached Alertmanager last (it
	// keeps the copy it got last).
	resending bool
	raced     []*entry
	evicted   int64
	closed    bool
}

var (
	_ detector.Sink        = (*Sink)(nil)
	_ prometheus.Collector = (*Sink)(nil)
)

type target struct {
	base string // the configured URL: in errors, logs and metric labels
	post string // base + /api/v2/alerts

	mu         sync.Mutex
	lastLog    time.Time // of a failure another Alertmanager made up for
	suppressed int       // such failures not logged since
}

// logEvery bounds the log lines about one Alertmanager of several that is
// down: one per interval, with the count of the others.
const logEvery = 30 * time.Second

// logFailure logs err unless one was logged for t within logEvery.
func (s *Sink) logFailure(t *target, alerts int, err error) {
	t.mu.Lock()
	now := time.Now()
	if !t.lastLog.IsZero() && now.Sub(t.lastLog) < logEvery {
		t.suppressed++
		t.mu.Unlock()
		return
	}
	n := t.suppressed
	t.lastLog, t.suppressed = now, 0
	t.mu.Unlock()
	s.log.Warn("alertmanager: an Alertmanager did not take alerts another one took; the re-send will deliver them",
		"url", t.base, "alerts", alerts, "err", err, "failures_not_logged", n)
}

// entry is one Alertmanager alert (label set) the sink has fired.
type entry struct {
	key, agent, kind string
	labels           map[string]string // never modified once built
	annotations      map[string]string // replaced, never modified
	generatorURL     string
	startsAt         time.Time
	lastSeen         time.Time // wall clock of its latest vigil alert
	window           int64     // window start (Unix ns) of its latest vigil alert
	lastFiring       time.Time // when it was last sent firing (endsAt = this + ResolveAfter)
	resolvedAt       time.Time // zero while firing
	resolvedSent     bool
	elem             *list.Element // in firing or resolved
}

// New returns a Sink for cfg (zero fields take their defaults). It reads
// the TLS files and checks the secret files now; log may be nil.
func New(cfg Config, log *slog.Logger) (*Sink, error) {
	cfg.fillDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.BasicAuth.PasswordFile != "" {
		if _, err := readSecret("basic_auth.password_file", cfg.BasicAuth.PasswordFile); err != nil {
			return nil, err
		}
	}
	if cfg.BearerTokenFile != "" {
		if _, err := readSecret("bearer_token_file", cfg.BearerTokenFile); err != nil {
			return nil, err
		}
	}
	tr, err := newTransport(cfg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sink{
		cfg: cfg, log: log, transport: tr, now: time.Now,
		client: &http.Client{
			Transport: tr,
			// Alertmanager does not redirect its API; a redirect means a
			// wrong URL, and following it would drop or leak credentials.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		byKey: make(map[string]*entry), byAgent: make(map[string][]*entry),
	}
	for _, u := range cfg.URLs {
		p, _ := endpoint(u)
		s.targets = append(s.targets, &target{base: u, post: p})
	}
	s.m = newMetrics(cfg.URLs, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(s.firing.Len())
	})
	return s, nil
}

// Name is "alertmanager".
func (s *Sink) Name() string { return "alertmanager" }

// Write fires b's alerts and resolves the alerts of agents whose window
// records in b are normal again, posting them to every Alertmanager at
// once. It returns nil once at least one Alertmanager accepted them (the
// others get them from Run's re-send); see the package documentation for
// its errors. Safe for concurrent use.
func (s *Sink) Write(ctx context.Context, b detector.Batch) error {
	if len(b.Alerts) == 0 && len(b.Windows) == 0 {
		return nil
	}
	now := s.now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("alertmanager: write after Close: %w", detector.ErrPermanent)
	}
	var out []postableAlert
	// Alerts first: a normal window later than an alert's window, in the
	// same batch, resolves it.
	for _, a := range b.Alerts {
		out = s.fire(out, a, now)
	}
	for i := range b.Windows {
		w := &b.Windows[i]
		agent := boundID(w.AgentID)
		if w.Cold || w.Severity >= detector.SeverityWarning || len(s.byAgent[agent]) == 0 {
			continue
		}
		start := w.Start
		out = s.resolveAgent(out, agent, func(e *entry) bool { return e.window < start }, reasonNormal, now)
	}
	s.mu.Unlock()
	if len(out) == 0 {
		return nil
	}
	return s.send(ctx, out)
}

// fire records alert a and appends its Alertmanager alert (and those it
// supersedes) to out. s.mu is held.
func (s *Sink) fire(out []postableAlert, a *detector.Alert, now time.Time) []postableAlert {
	a = bounded(a) // ids from here on: labels, summary, keys
	key, ws := labelKey(a), a.WindowStart.UnixNano()
	// One alert per agent and kind: a newer alert with another severity
	// (or class) resolves the older one.
	out = s.resolveAgent(out, a.AgentID, func(e *entry) bool {
		return e.kind == a.Kind && e.key != key && e.window < ws
	}, reasonSuperseded, now)
	e := s.byKey[key]
	if e != nil && !e.resolvedAt.IsZero() {
		// It fires again after it was resolved: a new episode.
		s.drop(e)
		e = nil
	}
	if e == nil {
		for s.firing.Len() >= s.cfg.MaxActive {
			old := s.firing.Front().Value.(*entry)
			s.resolve(old, now, reasonEvicted)
			s.evicted++
			out = append(out, s.snapshot(old, now))
		}
		start := a.DetectedAt
		if start.IsZero() || start.After(now) {
			start = now
		}
		e = &entry{key: key, agent: a.AgentID, kind: a.Kind, labels: labels(s.cfg.AlertName, a), startsAt: start, window: ws}
		e.annotations, e.generatorURL = annotations(a), s.generatorURL(a)
		e.elem = s.firing.PushBack(e)
		s.byKey[key] = e
		s.byAgent[a.AgentID] = append(s.byAgent[a.AgentID], e)
	} else {
		s.firing.MoveToBack(e.elem)
		if ws >= e.window {
			e.window = ws
			e.annotations, e.generatorURL = annotations(a), s.generatorURL(a)
		}
	}
	e.lastSeen = now
	if s.resending {
		s.raced = append(s.raced, e)
	}
	return append(out, s.snapshot(e, now))
}

// resolveAgent resolves the agent's firing alerts that match and appends
// them to out. s.mu is held.
func (s *Sink) resolveAgent(out []postableAlert, agent string, match func(*entry) bool, reason string, now time.Time) []postableAlert {
	es := s.byAgent[agent]
	// Backwards: resolve swaps the last entry into the removed one's place.
	for i := len(es) - 1; i >= 0; i-- {
		if e := es[i]; match(e) {
			s.resolve(e, now, reason)
			out = append(out, s.snapshot(e, now))
		}
	}
	return out
}

// resolve marks e resolved at at. s.mu is held.
func (s *Sink) resolve(e *entry, at time.Time, reason string) {
	e.resolvedAt = at
	if e.resolvedAt.Before(e.startsAt) {
		e.resolvedAt = e.startsAt
	}
	es := s.byAgent[e.agent]
	for i, o := range es {
		if o == e {
			es[i] = es[len(es)-1]
			es[len(es)-1] = nil
			es = es[:len(es)-1]
			break
		}
	}
	if len(es) == 0 {
		delete(s.byAgent, e.agent)
	} else {
		s.byAgent[e.agent] = es
	}
	s.firing.Remove(e.elem)
	e.elem = s.resolved.PushBack(e)
	if s.resending {
		s.raced = append(s.raced, e)
	}
	s.m.resolved.WithLabelValues(reason).Inc()
	// Forgetting a resolved alert early is safe: Alertmanager times it out
	// at the endsAt it last got.
	for s.resolved.Len() > s.cfg.MaxActive {
		s.drop(s.resolved.Front().Value.(*entry))
	}
}

// drop forgets a resolved entry. s.mu is held.
func (s *Sink) drop(e *entry) {
	s.resolved.Remove(e.elem)
	if s.byKey[e.key] == e {
		delete(s.byKey, e.key)
	}
}

// snapshot is e as Alertmanager gets it now. s.mu is held.
func (s *Sink) snapshot(e *entry, now time.Time) postableAlert {
	p := postableAlert{Labels: e.labels, Annotations: e.annotations, StartsAt: e.startsAt, GeneratorURL: e.generatorURL}
	if e.resolvedAt.IsZero() {
		p.EndsAt = now.Add(s.cfg.ResolveAfter)
		e.lastFiring = now
	} else {
		p.EndsAt = e.resolvedAt
		e.resolvedSent = true
	}
	return p
}

func (s *Sink) generatorURL(a *detector.Alert) string {
	if s.cfg.GeneratorURL == "" {
		return ""
	}
	return expandGenerator(s.cfg.GeneratorURL, a.AlertID, a.AgentID, a.Kind)
}

// Run re-sends every firing alert each ResendInterval, resolves those not
// refreshed for ResolveAfter, and re-sends recent resolutions, until ctx
// ends; then it returns nil. Call it once, in its own goroutine.
func (s *Sink) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ResendInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.resend(ctx)
		}
	}
}

// resend is one round of Run.
func (s *Sink) resend(ctx context.Context) {
	now := s.now()
	s.mu.Lock()
	for el := s.firing.Front(); el != nil; {
		e, next := el.Value.(*entry), el.Next()
		if exp := e.lastSeen.Add(s.cfg.ResolveAfter); !now.Before(exp) {
			s.resolve(e, exp, reasonExpired)
		}
		el = next
	}
	out := make([]postableAlert, 0, s.firing.Len()+s.resolved.Len())
	for el := s.resolved.Front(); el != nil; {
		e, next := el.Value.(*entry), el.Next()
		// Once Alertmanager would have timed it out, the resolution
		// needs no more sending.
		if e.resolvedSent && !now.Before(e.lastFiring.Add(s.cfg.ResolveAfter)) {
			s.drop(e)
		} else {
			out = append(out, s.snapshot(e, now))
		}
		el = next
	}
	for el := s.firing.Front(); el != nil; el = el.Next() {
		out = append(out, s.snapshot(el.Value.(*entry), now))
	}
	s.resending = true
	evicted := s.evicted
	s.evicted = 0
	s.mu.Unlock()

	if evicted > 0 {
		s.log.Warn("alertmanager: too many firing alerts; resolved the least recently refreshed",
			"evicted", evicted, "max_active", s.cfg.MaxActive)
	}
	if len(out) > 0 {
		if err := s.send(ctx, out); err != nil {
			s.log.Warn("alertmanager: re-send failed; retrying at the next interval", "alerts", len(out), "err", err)
		}
	}

	s.mu.Lock()
	raced, seen := out[:0], make(map[string]bool, len(s.raced))
	for _, e := range s.raced {
		if seen[e.key] {
			continue
		}
		seen[e.key] = true
		if cur := s.byKey[e.key]; cur != nil {
			e = cur // it fired again since
		}
		raced = append(raced, s.snapshot(e, now))
	}
	clear(s.raced)
	s.raced, s.resending = s.raced[:0], false
	s.mu.Unlock()
	if len(raced) > 0 {
		if err := s.send(ctx, raced); err != nil {
			s.log.Warn("alertmanager: re-send of resolutions failed; retrying at the next interval", "alerts", len(raced), "err", err)
		}
	}
}

// Close releases the Sink's connections; Write fails after it. Firing
// alerts are not resolved: they time out in Alertmanager after
// ResolveAfter unless a new vigil fires them again.
func (s *Sink) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.transport.CloseIdleConnections()
	return nil
}

// send posts alerts to every Alertmanager at once and waits for all of
// them. Nil when at least one accepted every alert; failures of the others
// are logged.
func (s *Sink) send(ctx context.Context, alerts []postableAlert) error {
	bodies := make([][]byte, 0, (len(alerts)+maxPerPost-1)/maxPerPost)
	counts := make([]int, 0, cap(bodies))
	for i := 0; i < len(alerts); i += maxPerPost {
		chunk := alerts[i:min(i+maxPerPost, len(alerts))]
		b, err := json.Marshal(chunk)
		if err != nil {
			return fmt.Errorf("alertmanager: encode alerts: %w", errors.Join(err, detector.ErrPermanent))
		}
		bodies, counts = append(bodies, b), append(counts, len(chunk))
	}
	errs := make([]error, len(s.targets))
	var wg sync.WaitGroup
	for i := range s.targets {
		wg.Go(func() {
			for j, body := range bodies {
				if errs[i] = s.post(ctx, s.targets[i], body, counts[j]); errs[i] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	ok, permanent := 0, 0
	for _, err := range errs {
		var pe *postError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &pe) && pe.permanent():
			permanent++
		}
	}
	if ok > 0 {
		for i, err := range errs {
			if err != nil {
				s.logFailure(s.targets[i], len(alerts), err)
			}
		}
		return nil
	}
	err := errors.Join(errs...)
	if permanent == len(errs) {
		return fmt.Errorf("alertmanager: every Alertmanager rejected %d alerts: %w", len(alerts), errors.Join(err, detector.ErrPermanent))
	}
	return fmt.Errorf("alertmanager: no Alertmanager took %d alerts: %w", len(alerts), err)
}

// postError is a failed POST to one Alertmanager. It names the URL, never
// credentials.
type postError struct {
	url    string
	status int    // 0: no response
	msg    string // Alertmanager's message, or the transport error
	tls    bool   // a TLS failure that the configuration causes
}

func (e *postError) Error() string {
	if e.status == 0 {
		return "alertmanager " + e.url + ": " + e.msg
	}
	return fmt.Sprintf("alertmanager %s: HTTP %d: %s", e.url, e.status, e.msg)
}

// permanent: the request itself is wrong (payload, credentials, URL,
// certificates), not the moment; 408 and 429 are the moment.
func (e *postError) permanent() bool {
	return e.tls || e.status >= 300 && e.status < 500 && e.status != http.StatusRequestTimeout && e.status != http.StatusTooManyRequests
}

// post sends one body of n alerts to t.
func (s *Sink) post(ctx context.Context, t *target, body []byte, n int) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.post, bytes.NewReader(body))
	if err != nil {
		return &postError{url: t.base, msg: "bad URL"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil")
	secrets, err := s.authorize(req)
	if err != nil {
		s.m.posts.WithLabelValues(t.base, "error").Inc()
		return &postError{url: t.base, msg: err.Error()}
	}
	start := time.Now()
	resp, err := s.client.Do(req)
	s.m.duration.WithLabelValues(t.base).Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.posts.WithLabelValues(t.base, "error").Inc()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is in postError already
		}
		if !detector.IsTLSConfigError(err) && ctx.Err() == nil {
			if terr := httpauth.DiagnoseTLS(ctx, t.post, s.transport.TLSClientConfig); terr != nil {
				err = fmt.Errorf("%w (after: %v)", terr, err)
			}
		}
		if detector.IsTLSConfigError(err) {
			return &postError{url: t.base, tls: true, msg: "TLS: " + err.Error() + ": " + detector.TLSConfigFix("alertmanager.tls", err)}
		}
		return &postError{url: t.base, msg: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		s.m.posts.WithLabelValues(t.base, "ok").Inc()
		s.m.sent.WithLabelValues(t.base).Add(float64(n))
		return nil
	}
	// Read past what is quoted, so that credentials the server echoes are
	// redacted whole before the message is cut.
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	for _, sec := range secrets {
		msg = bytes.ReplaceAll(msg, []byte(sec), []byte("[redacted]"))
	}
	msg = msg[:min(len(msg), 512)]
	pe := &postError{url: t.base, status: resp.StatusCode, msg: responseMessage(msg)}
	result := "error"
	if pe.permanent() {
		result = "rejected"
	}
	s.m.posts.WithLabelValues(t.base, result).Inc()
	return pe
}

// responseMessage extracts Alertmanager's error message: a JSON string, or
// an object with "message".
func responseMessage(b []byte) string {
	var str string
	if json.Unmarshal(b, &str) == nil {
		return clean(str)
	}
	var obj struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &obj) == nil && obj.Message != "" {
		return clean(obj.Message)
	}
	s := strings.TrimSpace(clean(string(b)))
	if s == "" {
		return "(no message)"
	}
	return strconv.Quote(s)
}

// authorize adds the configured credentials, read from their files now so
// rotated secrets are picked up, and returns them (and their encodings) to
// be redacted from what the server answers.
func (s *Sink) authorize(req *http.Request) ([]string, error) {
	switch {
	case s.cfg.BasicAuth.Username != "":
		pw, err := readSecret("basic_auth.password_file", s.cfg.BasicAuth.PasswordFile)
		if err != nil {
			return nil, err
		}
		req.SetBasicAuth(s.cfg.BasicAuth.Username, pw)
		return []string{base64.StdEncoding.EncodeToString([]byte(s.cfg.BasicAuth.Username + ":" + pw)), pw}, nil
	case s.cfg.BearerTokenFile != "":
		tok, err := readSecret("bearer_token_file", s.cfg.BearerTokenFile)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		return []string{tok}, nil
	}
	return nil, nil
}
