package alertmanager

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/models"
)

// t0 is the test clock's start.
var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

// clock is a settable wall clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeAM records what is posted to it and answers with status (0: 200).
type fakeAM struct {
	srv    *httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	posts  [][]postableAlert
	raw    [][]byte
	hdrs   []http.Header
}

func newFakeAM(t *testing.T) *fakeAM {
	f := &fakeAM{}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAM) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v2/alerts" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, `"bad request"`, http.StatusBadRequest)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var as []postableAlert
	if err := json.Unmarshal(body, &as); err != nil {
		http.Error(w, `"bad json"`, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.posts = append(f.posts, as)
	f.raw = append(f.raw, body)
	f.hdrs = append(f.hdrs, r.Header.Clone())
	f.mu.Unlock()
	if s := f.status.Load(); s != 0 {
		w.WriteHeader(int(s))
		fmt.Fprintf(w, `{"code":%d,"message":"told to fail"}`, s)
	}
}

// take returns and forgets the alerts posted so far, flattened.
func (f *fakeAM) take() []postableAlert {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []postableAlert
	for _, p := range f.posts {
		all = append(all, p...)
	}
	f.posts = nil
	return all
}

func (f *fakeAM) headers() []http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]http.Header(nil), f.hdrs...)
}

// newTestSink returns a sink on the fake clock c posting to urls.
func newTestSink(t testing.TB, c *clock, cfg Config, urls ...string) *Sink {
	t.Helper()
	cfg.URLs = urls
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c != nil {
		s.now = c.now
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// alert returns a vigil alert of agent for the window starting win
// (minutes after t0).
func alert(agent, kind string, sev detector.Severity, win int) *detector.Alert {
	ws := t0.Add(time.Duration(win) * 5 * time.Minute)
	return &detector.Alert{
		AlertID: detector.AlertID(agent, ws.UnixNano(), kind), AgentID: agent, AgentClass: "payments",
		WindowStart: ws, WindowEnd: ws.Add(5 * time.Minute), DetectedAt: ws.Add(5 * time.Minute),
		Score: 93, Severity: sev, Kind: kind,
		Reasons: []models.Reason{
			{Feature: "new_targets", Value: 14, Expected: 0.2, Z: 9.12, Contribution: 0.62},
			{Feature: "distinct_targets", Value: 21, Expected: 6.4, Z: 4.31, Contribution: 0.2},
		},
		Baseline: detector.Baseline{Source: models.SourceAgent, Windows: 288},
	}
}

// window returns a window record of agent starting win (as in alert).
func window(agent string, sev detector.Severity, win int) detector.WindowRecord {
	ws := t0.Add(time.Duration(win) * 5 * time.Minute)
	return detector.WindowRecord{AgentID: agent, AgentClass: "payments", Start: ws.UnixNano(), End: ws.Add(5 * time.Minute).UnixNano(), Severity: sev, Score: 12}
}

// byAgentKind indexes posted alerts by agent_id/kind/severity, keeping the
// last one.
func byAgentKind(as []postableAlert) map[string]postableAlert {
	m := map[string]postableAlert{}
	for _, a := range as {
		m[a.Labels["agent_id"]+"/"+a.Labels["kind"]+"/"+a.Labels["severity"]] = a
	}
	return m
}
