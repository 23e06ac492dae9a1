package alertmanager

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
)

const ra = 15 * time.Minute

func TestFireKeepsStartRefreshesEnd(t *testing.T) {
	am, c := newFakeAM(t), newClock()
	s := newTestSink(t, c, Config{}, am.srv.URL)
	ctx := context.Background()
	a1 := alert("a", detector.KindNovelAccess, detector.SeverityCritical, 0)
	c.advance(6 * time.Minute) // a1 detected at t0+5m; the sink sees it at t0+6m
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{a1}}); err != nil {
		t.Fatal(err)
	}
	got := am.take()
	if len(got) != 1 {
		t.Fatalf("posted %d alerts, want 1", len(got))
	}
	if want := a1.DetectedAt; !got[0].StartsAt.Equal(want) {
		t.Errorf("startsAt %v, want detected_at %v", got[0].StartsAt, want)
	}
	if want := c.now().Add(ra); !got[0].EndsAt.Equal(want) {
		t.Errorf("endsAt %v, want now + resolve_after %v", got[0].EndsAt, want)
	}

	// The next window's alert of the same kind and severity: the same
	// Alertmanager alert, still starting at the first, newer annotations.
	a2 := alert("a", detector.KindNovelAccess, detector.SeverityCritical, 1)
	c.advance(5 * time.Minute)
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{a2}}); err != nil {
		t.Fatal(err)
	}
	got = am.take()
	if len(got) != 1 {
		t.Fatalf("posted %d alerts, want 1", len(got))
	}
	if !got[0].StartsAt.Equal(a1.DetectedAt) {
		t.Errorf("startsAt %v changed, want the first %v", got[0].StartsAt, a1.DetectedAt)
	}
	if want := c.now().Add(ra); !got[0].EndsAt.Equal(want) {
		t.Errorf("endsAt %v, want %v", got[0].EndsAt, want)
	}
	if got[0].Annotations["alert_id"] != a2.AlertID {
		t.Errorf("alert_id annotation %q, want the latest %q", got[0].Annotations["alert_id"], a2.AlertID)
	}
	// A late alert of an older window refreshes the alert but keeps the
	// newer annotations.
	c.advance(time.Minute)
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{a1}}); err != nil {
		t.Fatal(err)
	}
	if got = am.take(); got[0].Annotations["alert_id"] != a2.AlertID {
		t.Errorf("alert_id annotation %q after a late alert, want %q", got[0].Annotations["alert_id"], a2.AlertID)
	}
	if n := firing(s); n != 1 {
		t.Errorf("%d firing, want 1", n)
	}
}

func firing(s *Sink) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firing.Len()
}

func TestNormalWindowResolves(t *testing.T) {
	for _, tc := range []struct {
		name    string
		w       detector.WindowRecord
		resolve bool
	}{
		{"later normal window", window("a", detector.SeverityNone, 3), true},
		{"later info window", window("a", detector.SeverityInfo, 3), true},
		{"later warning window", window("a", detector.SeverityWarning, 3), false},
		{"the alert's own window", window("a", detector.SeverityNone, 2), false},
		{"an earlier window, late", window("a", detector.SeverityNone, 1), false},
		{"another agent", window("b", detector.SeverityNone, 3), false},
		{"cold window", func() detector.WindowRecord { w := window("a", detector.SeverityNone, 3); w.Cold = true; return w }(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			am, c := newFakeAM(t), newClock()
			s := newTestSink(t, c, Config{}, am.srv.URL)
			ctx := context.Background()
			c.advance(30 * time.Minute) // the alerts below were detected in the past
			b := detector.Batch{Alerts: []*detector.Alert{
				alert("a", detector.KindVolume, detector.SeverityWarning, 2),
				alert("a", detector.KindMoney, detector.SeverityCritical, 2),
			}}
			if err := s.Write(ctx, b); err != nil {
				t.Fatal(err)
			}
			am.take()
			c.advance(time.Minute)
			if err := s.Write(ctx, detector.Batch{Windows: []detector.WindowRecord{tc.w}}); err != nil {
				t.Fatal(err)
			}
			got := am.take()
			if !tc.resolve {
				if len(got) != 0 || firing(s) != 2 {
					t.Fatalf("posted %d, %d firing; want nothing posted and 2 firing", len(got), firing(s))
				}
				return
			}
			if len(got) != 2 || firing(s) != 0 {
				t.Fatalf("posted %d, %d firing; want 2 resolutions, none firing", len(got), firing(s))
			}
			for _, a := range got {
				if !a.EndsAt.Equal(c.now()) {
					t.Errorf("%v: endsAt %v, want now %v", a.Labels, a.EndsAt, c.now())
				}
			}
			// Resolved and forgotten: a new alert is a new episode.
			c.advance(time.Minute)
			s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityWarning, 4)}})
			got = am.take()
			if want := alert("a", detector.KindVolume, detector.SeverityWarning, 4).DetectedAt; len(got) != 1 || !got[0].StartsAt.Equal(want) {
				t.Errorf("new episode: %+v, want startsAt %v", got, want)
			}
		})
	}
}

// An alert and a later normal window in the same batch: fired, then
// resolved.
func TestSameBatchAlertThenNormal(t *testing.T) {
	am, c := newFakeAM(t), newClock()
	s := newTestSink(t, c, Config{}, am.srv.URL)
	b := detector.Batch{
		Alerts:  []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityCritical, 2)},
		Windows: []detector.WindowRecord{window("a", detector.SeverityCritical, 2), window("a", detector.SeverityNone, 3)},
	}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	got := am.take()
	if len(got) != 2 || got[0].EndsAt.Equal(c.now()) || !got[1].EndsAt.Equal(c.now()) {
		t.Fatalf("got %+v, want firing then resolved", got)
	}
	if firing(s) != 0 {
		t.Errorf("%d firing, want 0", firing(s))
	}
}

func TestSeverityChangeSupersedes(t *testing.T) {
	am, c := newFakeAM(t), newClock()
	s := newTestSink(t, c, Config{}, am.srv.URL)
	ctx := context.Background()
	s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{
		alert("a", detector.KindVolume, detector.SeverityWarning, 1),
		alert("a", detector.KindMoney, detector.SeverityWarning, 1),
	}})
	am.take()
	c.advance(5 * time.Minute)
	if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityCritical, 2)}}); err != nil {
		t.Fatal(err)
	}
	got := byAgentKind(am.take())
	if w := got["a/volume/warning"]; !w.EndsAt.Equal(c.now()) {
		t.Errorf("warning volume alert endsAt %v, want resolved now %v", w.EndsAt, c.now())
	}
	if cr := got["a/volume/critical"]; !cr.EndsAt.After(c.now()) {
		t.Errorf("critical volume alert endsAt %v, want firing", cr.EndsAt)
	}
	if _, ok := got["a/money_movement/warning"]; ok {
		t.Error("the money alert (another kind) was touched")
	}
	if n := firing(s); n != 2 {
		t.Errorf("%d firing, want 2 (critical volume, warning money)", n)
	}
}

func TestResendRefreshesAndExpires(t *testing.T) {
	am, c := newFakeAM(t), newClock()
	s := newTestSink(t, c, Config{ResendInterval: time.Minute, ResolveAfter: 10 * time.Minute}, am.srv.URL)
	ctx := context.Background()
	s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{alert("old", detector.KindVolume, detector.SeverityCritical, 0)}})
	c.advance(6 * time.Minute)
	s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{alert("new", detector.KindVolume, detector.SeverityCritical, 1)}})
	am.take()

	c.advance(time.Minute) // old: 7 min without an alert
	s.resend(ctx)
	got := byAgentKind(am.take())
	if len(got) != 2 {
		t.Fatalf("re-sent %d, want 2", len(got))
	}
	for _, a := range got {
		if want := c.now().Add(10 * time.Minute); !a.EndsAt.Equal(want) {
			t.Errorf("%s: re-sent endsAt %v, want refreshed %v", a.Labels["agent_id"], a.EndsAt, want)
		}
	}

	c.advance(4 * time.Minute) // old: 11 min without an alert
	s.resend(ctx)
	got = byAgentKind(am.take())
	if o := got["old/volume/critical"]; !o.EndsAt.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("expired alert endsAt %v, want its last alert + resolve_after %v", o.EndsAt, t0.Add(10*time.Minute))
	}
	if n := got["new/volume/critical"]; !n.EndsAt.After(c.now()) {
		t.Errorf("fresh alert endsAt %v, want firing", n.EndsAt)
	}
	if n := firing(s); n != 1 {
		t.Errorf("%d firing, want 1", n)
	}

	// The resolution is re-sent until Alertmanager would have timed the
	// alert out (resolve_after after its last firing send), then forgotten.
	for i := range 20 {
		c.advance(time.Minute)
		s.resend(ctx)
		_, ok := byAgentKind(am.take())["old/volume/critical"]
		if resend := c.now().Before(t0.Add(7*time.Minute + 10*time.Minute)); ok != resend {
			t.Errorf("round %d (%v): resolution re-sent %v, want %v", i, c.now().Sub(t0), ok, resend)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byKey) != 0 || s.resolved.Len() != 0 {
		t.Errorf("remembers %d alerts, %d resolved; want none (the other expired too)", len(s.byKey), s.resolved.Len())
	}
}

func TestMaxActiveEvictsOldest(t *testing.T) {
	am, c := newFakeAM(t), newClock()
	s := newTestSink(t, c, Config{MaxActive: 2}, am.srv.URL)
	ctx := context.Background()
	for _, agent := range []string{"a", "b", "a", "c"} { // a refreshed after b: b is the oldest
		c.advance(time.Second)
		if err := s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{alert(agent, detector.KindVolume, detector.SeverityCritical, 0)}}); err != nil {
			t.Fatal(err)
		}
	}
	got := am.take()
	last := got[len(got)-2:]
	if last[0].Labels["agent_id"] != "b" || !last[0].EndsAt.Equal(c.now()) {
		t.Errorf("want b resolved to make room, got %v ending %v", last[0].Labels, last[0].EndsAt)
	}
	if last[1].Labels["agent_id"] != "c" {
		t.Errorf("want c fired, got %v", last[1].Labels)
	}
	if n := firing(s); n != 2 {
		t.Errorf("%d firing, want 2", n)
	}
}

// A re-send in flight while a Write resolves an alert must not leave the
// alert firing: the resolution is sent again after the re-send.
func TestResendRaceResolution(t *testing.T) {
	c := newClock()
	am := newFakeAM(t)
	s := newTestSink(t, c, Config{}, am.srv.URL)
	ctx := context.Background()
	s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityCritical, 0)}})
	am.take()
	// Simulate: the re-send took its snapshot, then the resolution comes.
	s.mu.Lock()
	s.resending = true
	s.mu.Unlock()
	s.Write(ctx, detector.Batch{Windows: []detector.WindowRecord{window("a", detector.SeverityNone, 1)}})
	s.mu.Lock()
	s.resending = false
	raced := len(s.raced)
	s.mu.Unlock()
	if raced != 1 {
		t.Fatalf("%d raced, want 1", raced)
	}
	am.take()
	s.resend(ctx)
	got := am.take()
	if len(got) != 2 { // the resolution, in the re-send and after it
		t.Fatalf("got %d, want the resolution twice: %+v", len(got), got)
	}
	if !got[1].EndsAt.Equal(c.now()) {
		t.Errorf("last sent endsAt %v, want resolved at %v", got[1].EndsAt, c.now())
	}
}

func TestConcurrentWritesAndResends(t *testing.T) {
	am := newFakeAM(t)
	s := newTestSink(t, nil, Config{MaxActive: 50}, am.srv.URL)
	ctx := context.Background()
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			for i := range 50 {
				agent := fmt.Sprintf("p%d-agent%d", p, i%20)
				b := detector.Batch{
					Alerts:  []*detector.Alert{alert(agent, detector.Kinds[i%len(detector.Kinds)], detector.SeverityCritical, i)},
					Windows: []detector.WindowRecord{window(fmt.Sprintf("p%d-agent%d", p, (i+7)%20), detector.SeverityNone, i)},
				}
				if err := s.Write(ctx, b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			s.resend(ctx)
		}
	})
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, es := range s.byAgent {
		n += len(es)
	}
	if n != s.firing.Len() || s.firing.Len() > 50 {
		t.Errorf("by agent %d, firing %d (max 50)", n, s.firing.Len())
	}
}
