package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
	"github.com/vigil-sec/vigil/sinks/alertmanager"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// BenchmarkEventToAlertmanager measures the wall-clock time from producing
// a burst of severe events (an agent suddenly calling new services and
// being denied) into Kafka until the alert is listed by a real
// Alertmanager: broker → consumer → window → early critical decision →
// sink → Alertmanager API. Setup (a simulated fleet's two days of baseline
// through the broker) is not timed. Each iteration uses another agent.
//
//	go test -run '^$' -bench EventToAlertmanager -benchtime 10x ./bench
func BenchmarkEventToAlertmanager(b *testing.B) {
	am := sinktest.StartAlertmanager(b)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "agent-events"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateTopic("vigil-state", 2, map[string]string{"cleanup.policy": "compact"}); err != nil {
		b.Fatal(err)
	}
	addr := c.ListenAddrs()[0]

	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Seed = 24, 2, 2, 0, 5
	var ev, truth bytes.Buffer
	if _, err := sim.Generate(cfg, &ev, &truth); err != nil {
		b.Fatal(err)
	}
	type agentInfo struct {
		class string
		last  time.Time
	}
	agents := map[string]*agentInfo{}
	var msgs []kafka.Message
	var lastTS time.Time
	for _, line := range bytes.Split(ev.Bytes(), []byte("\n")) {
		var e struct {
			AgentID    string    `json:"agent_id"`
			AgentClass string    `json:"agent_class"`
			TS         time.Time `json:"ts"`
		}
		if json.Unmarshal(line, &e) != nil || e.AgentID == "" {
			continue
		}
		if agents[e.AgentID] == nil {
			agents[e.AgentID] = &agentInfo{class: e.AgentClass}
		}
		if e.TS.After(lastTS) {
			lastTS = e.TS
		}
		msgs = append(msgs, kafka.Message{Key: []byte(e.AgentID), Value: bytes.Clone(line)})
	}
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "agent-events", Transport: tr, RequiredAcks: kafka.RequireAll,
		Balancer: &kafka.Murmur2Balancer{}, BatchSize: 1000, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		b.Fatal(err)
	}

	amc := alertmanager.DefaultConfig()
	amc.URLs = []string{am.URL()}
	sink, err := alertmanager.New(amc, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	kc := detector.DefaultRuntimeConfig()
	kc.Brokers, kc.Group = []string{addr}, "latency"
	kc.IdleTimeout = 10 * time.Minute // windows close on event time only
	kc.SessionTimeout, kc.HeartbeatInterval = 6*time.Second, 500*time.Millisecond
	kc.FetchMaxWait = 50 * time.Millisecond
	fo, err := detector.NewFanout(nil, nil, kc.RetryBackoff, kc.MaxRetryBackoff, sink)
	if err != nil {
		b.Fatal(err)
	}
	rt, err := detector.NewRuntime(kc, detector.DefaultConfig(), fo, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	// Wait for the baseline to be consumed.
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: "latency", Topics: map[string][]int{"agent-events": {0, 1}}})
		var n int64
		if err == nil {
			for _, p := range of.Topics["agent-events"] {
				n += max(p.CommittedOffset, 0)
			}
		}
		if n == int64(len(msgs)) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("baseline not consumed: %d of %d committed", n, len(msgs))
		}
		time.Sleep(100 * time.Millisecond)
	}

	ids := make([]string, 0, len(agents))
	for id := range agents {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if b.N > len(ids) {
		b.Fatalf("at most %d iterations (one per agent)", len(ids))
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	var lat []float64
	at := lastTS.Add(time.Second)
	b.ResetTimer()
	for i := range b.N {
		id := ids[i]
		var burst []kafka.Message
		for j := range 40 {
			ts := at.Add(time.Duration(j) * 100 * time.Millisecond)
			burst = append(burst, kafka.Message{Key: []byte(id), Value: fmt.Appendf(nil,
				`{"event_id":"lat-%d-%d","ts":%q,"agent_id":%q,"agent_class":%q,"target_id":"svc-never-seen-%d","action":"admin.export.%d","decision":"deny","status":"denied","data_class":"restricted","auth":"none","src_ip":"203.0.113.%d"}`,
				i, j, ts.UTC().Format(time.RFC3339Nano), id, agents[id].class, j, j, j)})
		}
		at = at.Add(10 * time.Second)
		t0 := time.Now()
		if err := w.WriteMessages(ctx, burst...); err != nil {
			b.Fatal(err)
		}
		q := url.Values{"filter": {fmt.Sprintf("agent_id=%q", id)}}
		for {
			resp, err := hc.Get(am.URL() + "/api/v2/alerts?" + q.Encode())
			if err == nil {
				var got []json.RawMessage
				json.NewDecoder(resp.Body).Decode(&got)
				resp.Body.Close()
				if len(got) > 0 {
					break
				}
			}
			if time.Since(t0) > 30*time.Second {
				b.Fatalf("no alert for %s in Alertmanager after 30s", id)
			}
			time.Sleep(2 * time.Millisecond)
		}
		lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "ms-median")
	b.ReportMetric(lat[len(lat)-1], "ms-max")
}
