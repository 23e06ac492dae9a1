package alertmanager

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sec/vigil/detector"
)

// deadURL is a loopback URL nothing listens on.
func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

func TestWriteErrors(t *testing.T) {
	one := detector.Batch{Alerts: []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityCritical, 0)}}
	for _, tc := range []struct {
		name      string
		statuses  []int // one fake Alertmanager each; -1: nothing listening
		ok        bool
		permanent bool
	}{
		{"one up", []int{200}, true, false},
		{"HA: one down", []int{200, -1}, true, false},
		{"HA: one failing", []int{503, 200}, true, false},
		{"HA: one rejecting", []int{400, 200}, true, false},
		{"all down", []int{-1, -1}, false, false},
		{"5xx", []int{500}, false, false},
		{"408", []int{408}, false, false},
		{"429", []int{429}, false, false},
		{"400", []int{400}, false, true},
		{"401", []int{401}, false, true},
		{"403 and 400", []int{403, 400}, false, true},
		{"400 and down", []int{400, -1}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var urls []string
			for _, st := range tc.statuses {
				if st < 0 {
					urls = append(urls, deadURL(t))
					continue
				}
				am := newFakeAM(t)
				if st != 200 {
					am.status.Store(int32(st))
				}
				urls = append(urls, am.srv.URL)
			}
			s := newTestSink(t, nil, Config{Timeout: 2 * time.Second}, urls...)
			err := s.Write(context.Background(), one)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err == nil {
				return
			}
			if got := errors.Is(err, detector.ErrPermanent); got != tc.permanent {
				t.Errorf("permanent = %v, want %v: %v", got, tc.permanent, err)
			}
			for _, u := range urls {
				if !strings.Contains(err.Error(), u) {
					t.Errorf("error %q does not name %s", err, u)
				}
			}
		})
	}
}

func TestWriteAfterClose(t *testing.T) {
	am := newFakeAM(t)
	s := newTestSink(t, nil, Config{}, am.srv.URL)
	s.Close()
	err := s.Write(context.Background(), detector.Batch{Alerts: []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityCritical, 0)}})
	if !errors.Is(err, detector.ErrPermanent) {
		t.Errorf("Write after Close: %v, want a permanent error", err)
	}
}

func TestAuthHeaders(t *testing.T) {
	dir := t.TempDir()
	pw, tok := filepath.Join(dir, "pw"), filepath.Join(dir, "token")
	os.WriteFile(pw, []byte("pa55word\n"), 0o600)
	os.WriteFile(tok, []byte("t0ken-1\n"), 0o600)
	batch := detector.Batch{Alerts: []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityCritical, 0)}}

	t.Run("basic", func(t *testing.T) {
		am := newFakeAM(t)
		s := newTestSink(t, nil, Config{BasicAuth: BasicAuth{Username: "vigil", PasswordFile: pw}}, am.srv.URL)
		if err := s.Write(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte("vigil:pa55word"))
		if got := am.headers()[0].Get("Authorization"); got != want {
			t.Errorf("Authorization %q, want %q", got, want)
		}
	})
	t.Run("bearer, rotated", func(t *testing.T) {
		am := newFakeAM(t)
		s := newTestSink(t, nil, Config{BearerTokenFile: tok}, am.srv.URL)
		if err := s.Write(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(tok, []byte("t0ken-2"), 0o600)
		if err := s.Write(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		h := am.headers()
		if got := h[0].Get("Authorization"); got != "Bearer t0ken-1" {
			t.Errorf("Authorization %q, want Bearer t0ken-1", got)
		}
		if got := h[1].Get("Authorization"); got != "Bearer t0ken-2" {
			t.Errorf("after rotation Authorization %q, want Bearer t0ken-2", got)
		}
	})
	t.Run("rejected credentials are permanent and not shown", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Basic realm="am"`)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
		}))
		defer srv.Close()
		s := newTestSink(t, nil, Config{BasicAuth: BasicAuth{Username: "vigil", PasswordFile: pw}}, srv.URL)
		err := s.Write(context.Background(), batch)
		if !errors.Is(err, detector.ErrPermanent) {
			t.Errorf("401: %v, want permanent", err)
		}
		if err != nil && strings.Contains(err.Error(), "pa55word") {
			t.Errorf("error shows the password: %v", err)
		}
	})
	t.Run("credentials the server echoes are redacted", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, _ := r.BasicAuth()
			http.Error(w, "bad request from "+u+" with "+r.Header.Get("Authorization")+" password "+p+" token "+r.Header.Get("X-Token"), http.StatusBadRequest)
		}))
		defer srv.Close()
		for _, cfg := range []Config{{BasicAuth: BasicAuth{Username: "vigil", PasswordFile: pw}}, {BearerTokenFile: tok}} {
			err := newTestSink(t, nil, cfg, srv.URL).Write(context.Background(), batch)
			b64 := base64.StdEncoding.EncodeToString([]byte("vigil:pa55word"))
			if err == nil || strings.Contains(err.Error(), "pa55word") || strings.Contains(err.Error(), b64) || strings.Contains(err.Error(), "t0ken") || !strings.Contains(err.Error(), "[redacted]") {
				t.Errorf("%+v: %v: want the echoed credentials redacted", cfg, err)
			}
		}
	})
}

func TestTLS(t *testing.T) {
	am := &fakeAM{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(am.serve))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted handshake below
	srv.StartTLS()
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	batch := detector.Batch{Alerts: []*detector.Alert{alert("a", detector.KindVolume, detector.SeverityCritical, 0)}}

	// Without the CA the server is not trusted: a configuration error,
	// permanent (retrying fails the same way).
	s := newTestSink(t, nil, Config{Timeout: 2 * time.Second}, srv.URL)
	if err := s.Write(context.Background(), batch); !errors.Is(err, detector.ErrPermanent) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted server: %v, want a permanent certificate error", err)
	}
	// httptest's certificate is for example.com and 127.0.0.1.
	s = newTestSink(t, nil, Config{TLS: TLSConfig{CAFile: ca, ServerName: "example.com"}}, srv.URL)
	if err := s.Write(context.Background(), batch); err != nil {
		t.Errorf("with ca_file: %v", err)
	}
	s = newTestSink(t, nil, Config{TLS: TLSConfig{InsecureSkipVerify: true}}, srv.URL)
	if err := s.Write(context.Background(), batch); err != nil {
		t.Errorf("insecure_skip_verify: %v", err)
	}
	if n := len(am.take()); n != 2 {
		t.Errorf("%d alerts arrived, want 2", n)
	}
}

func TestMetrics(t *testing.T) {
	am, dead := newFakeAM(t), deadURL(t)
	s := newTestSink(t, nil, Config{}, am.srv.URL, dead)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s)
	ctx := context.Background()
	s.Write(ctx, detector.Batch{Alerts: []*detector.Alert{
		alert("a", detector.KindVolume, detector.SeverityCritical, 0),
		alert("b", detector.KindVolume, detector.SeverityCritical, 0),
	}})
	s.Write(ctx, detector.Batch{Windows: []detector.WindowRecord{window("a", detector.SeverityNone, 1)}})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for k, v := range map[string]float64{
		"vigil_alertmanager_posts_total,result=ok,url=" + am.srv.URL:       2,
		"vigil_alertmanager_posts_total,result=error,url=" + dead:          2,
		"vigil_alertmanager_alerts_sent_total,url=" + am.srv.URL:           3,
		"vigil_alertmanager_resolved_total,reason=normal":                  1,
		"vigil_alertmanager_resolved_total,reason=evicted":                 0,
		"vigil_alertmanager_firing_alerts":                                 1,
		"vigil_alertmanager_posts_total,result=rejected,url=" + dead:       0,
		"vigil_alertmanager_alerts_sent_total,url=" + dead:                 0,
		"vigil_alertmanager_resolved_total,reason=expired":                 0,
		"vigil_alertmanager_resolved_total,reason=superseded":              0,
		"vigil_alertmanager_posts_total,result=rejected,url=" + am.srv.URL: 0,
	} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
