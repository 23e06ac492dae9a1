// Command attacks replays a simulated fleet through the detector with the
// identity attacks of issue 17 (items 4–6) written into it, and prints
// what they did: impostors in new peer groups, reused event ids, and a
// flood of made-up identities and groups. It uses only the Pipeline's
// public API, so the same program measures older versions too.
//
//	go run ./bench/attacks [--seed 7] [--flood 50000]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
)

var (
	tsRe    = regexp.MustCompile(`"ts":"([^"]+)"`)
	agentRe = regexp.MustCompile(`"agent_id":"([^"]+)"`)
)

func main() {
	seed := flag.Int64("seed", 7, "simulation seed")
	flood := flag.Int("flood", 50000, "made-up identities in the flood (5 events each)")
	flag.Parse()
	var buf, truth bytes.Buffer
	if _, err := sim.Generate(sim.Config{Seed: *seed, Agents: 30, Days: 4, WarmupDays: 2, Incidents: 4}, &buf, &truth); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	start := lineTime(lines[0])
	at := start.Add(50 * time.Hour)

	// Impostors: never-seen ids claiming a group nobody has, or none.
	impostors := []struct{ agent, class string }{
		{"spiffe://bank.example/agent/shadow-admin-01", "shadow-admin"},
		{"spiffe://bank.example/agent/ledger-sync-07", ""},
		{"spiffe://bank.example/agent/x-7f3a", "tooling"},
	}
	var extra [][]byte
	for k, imp := range impostors {
		t0 := at.Add(time.Duration(k) * time.Hour)
		for i := range 120 {
			decision := "allow"
			if i%4 == 0 {
				decision = "deny"
			}
			extra = append(extra, event(fmt.Sprintf("imp%d-%d", k, i), imp.agent, imp.class, t0.Add(time.Duration(i)*5*time.Second),
				fmt.Sprintf("core-ledger-%d", i%9), "records.export", "restricted", decision, 2_000_000))
		}
	}
	alerted := map[string]int{}
	p := must(detector.NewPipeline(detector.DefaultConfig(), func(a *detector.Alert) {
		if a.Severity >= detector.SeverityWarning {
			alerted[a.AgentID]++
		}
	}))
	for _, l := range merge(lines, extra) {
		_ = p.Process(l)
	}
	p.Flush()
	n := 0
	for _, imp := range impostors {
		if alerted[imp.agent] > 0 {
			n++
		}
	}
	fmt.Printf("impostors in new peer groups alerted on (warning or worse): %d of %d\n", n, len(impostors))

	// Reused event ids: forged events take the ids of real ones, sent first.
	p = must(detector.NewPipeline(detector.DefaultConfig(), nil))
	var reused, lost int
	for i, l := range lines {
		if i%10 == 9 && i > 1000 {
			forged := agentRe.ReplaceAll(l, []byte(`"agent_id":"spiffe://bank.example/agent/ghost-1"`))
			if p.Process(forged) == nil {
				reused++
				before := p.Stats().Duplicates
				_ = p.Process(l)
				if p.Stats().Duplicates > before {
					lost++ // the real event silently dropped as a duplicate
				}
				continue
			}
		}
		_ = p.Process(l)
	}
	fmt.Printf("reused event ids: %d forged, %d real events dropped as duplicates\n", reused, lost)

	// A flood of made-up identities, half of them in made-up groups.
	extra = extra[:0]
	for i := range *flood {
		class := "fraud-scorer"
		if i%2 == 1 {
			class = fmt.Sprintf("made-up-%d", i)
		}
		t0 := at.Add(time.Duration(i) * 20 * time.Millisecond)
		for j := range 5 {
			extra = append(extra, event(fmt.Sprintf("fl%d-%d", i, j), fmt.Sprintf("spiffe://bank.example/agent/flood-%d", i), class,
				t0.Add(time.Duration(j)*time.Millisecond), "vault", "secrets.read", "restricted", "deny", 5_000_000))
		}
	}
	var floodAlerts, critical int
	kinds := map[string]int{}
	p = must(detector.NewPipeline(detector.DefaultConfig(), func(a *detector.Alert) {
		floodAlerts++
		kinds[a.Kind]++
		if a.Severity == detector.SeverityCritical {
			critical++
		}
	}))
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap0 := ms.HeapAlloc
	for _, l := range merge(lines, extra) {
		_ = p.Process(l)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	st := p.Stats()
	fmt.Printf("flood of %d made-up ids (%d events): %d agents and %d peer groups held, heap %+.0f MiB; %d alerts (%d critical) %v\n",
		*flood, len(extra), st.Agents, st.Classes, float64(int64(ms.HeapAlloc)-int64(heap0))/(1<<20), floodAlerts, critical, kinds)
	runtime.KeepAlive(p)
}

func event(id, agent, class string, at time.Time, target, action, data, decision string, bytesOut int) []byte {
	cls := ""
	if class != "" {
		cls = fmt.Sprintf(`,"agent_class":%q`, class)
	}
	return fmt.Appendf(nil, `{"event_id":%q,"ts":%q,"agent_id":%q%s,"target_id":%q,"action":%q,"decision":%q,"data_class":%q,"status":"ok","bytes_out":%d,"credential_id":"cred-%s","auth":"mtls","attested":true,"src_ip":"10.9.9.9"}`,
		id, at.UTC().Format(time.RFC3339Nano), agent, cls, target, action, decision, data, bytesOut, id)
}

func lineTime(l []byte) time.Time {
	m := tsRe.FindSubmatch(l)
	if m == nil {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, string(m[1]))
	return t
}

// merge inserts extra (in time order) among lines by event time.
func merge(lines, extra [][]byte) [][]byte {
	var out [][]byte
	j := 0
	for _, l := range lines {
		ts := lineTime(l)
		for j < len(extra) && !ts.IsZero() && lineTime(extra[j]).Before(ts) {
			out = append(out, extra[j])
			j++
		}
		out = append(out, l)
	}
	return append(out, extra[j:]...)
}

func must[T any](v T, err error) T {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	return v
}
