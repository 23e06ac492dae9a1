package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vigil-sec/vigil/sim"
)

// ErrMalformed is wrapped by ReadAlerts and ReadTruth when a line is not a valid
// record; the error names the line.
var ErrMalformed = errors.New("malformed line")

// maxLine bounds one JSONL record (alerts carry their reasons).
const maxLine = 16 << 20

// Alert is the part of an alert (alert contract v1) that evaluation needs.
type Alert struct {
	AlertID     string    `json:"alert_id"`
	AgentID     string    `json:"agent_id"`
	AgentClass  string    `json:"agent_class"`
	Kind        string    `json:"kind"`
	Severity    string    `json:"severity"`
	Score       float64   `json:"score"`
	WindowStart time.Time `json:"window_start"`
	WindowEnd   time.Time `json:"window_end"`
	DetectedAt  time.Time `json:"detected_at"`
}

// ReadAlerts decodes alert JSONL. Blank lines are skipped; unknown fields are ignored.
// A line that is not JSON or lacks agent_id or window_start fails with ErrMalformed.
func ReadAlerts(r io.Reader) ([]Alert, error) {
	var out []Alert
	err := readJSONL(r, "alerts", func(line []byte) error {
		var a Alert
		if err := json.Unmarshal(line, &a); err != nil {
			return err
		}
		if a.AgentID == "" || a.WindowStart.IsZero() {
			return errors.New("agent_id and window_start are required")
		}
		out = append(out, a)
		return nil
	})
	return out, err
}

// ReadTruth decodes a truth file written by sim.Generate. A line that is not JSON or
// lacks incident_id, kind, agent_id or start fails with ErrMalformed.
func ReadTruth(r io.Reader) ([]sim.Incident, error) {
	var out []sim.Incident
	err := readJSONL(r, "truth", func(line []byte) error {
		var inc sim.Incident
		if err := json.Unmarshal(line, &inc); err != nil {
			return err
		}
		if inc.ID == "" || inc.Kind == "" || inc.AgentID == "" || inc.Start.IsZero() {
			return errors.New("incident_id, kind, agent_id and start are required")
		}
		out = append(out, inc)
		return nil
	})
	return out, err
}

func readJSONL(r io.Reader, what string, decode func([]byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		if err := decode(line); err != nil {
			return fmt.Errorf("bench: %s line %d: %w: %w", what, n, ErrMalformed, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("bench: read %s: %w", what, err)
	}
	return nil
}

// KindReport is the result for one incident kind.
type KindReport struct {
	Benign    bool          // a benign change kind
	Incidents int           // incidents (or benign changes) of this kind in the truth
	Detected  int           // malicious kinds: incidents with at least one matching alert
	Recall    float64       // Detected / Incidents
	TTDMedian time.Duration // median time to detect over the detected incidents
	Alerts    int           // malicious kinds: alerts matching them; benign kinds: false alerts during them
}

// Report is the outcome of Evaluate.
type Report struct {
	Incidents, Detected    int // malicious incidents, and those with at least one matching alert
	Recall                 float64
	Alerts                 int // distinct alerts (by alert_id)
	TrueAlerts             int // alerts matching at least one malicious incident
	FalseAlerts            int // all other alerts
	Precision              float64
	AgentDays              float64
	FalseAlertsPerAgentDay float64
	TTDMedian, TTDP90      time.Duration // over detected incidents (nearest rank)
	BenignAlerts           int           // false alerts on an agent within 24 h of a benign change to it
	BenignCritical         int           // of those, severity "critical"
	PerKind                map[string]KindReport
	Missed                 []sim.Incident // undetected malicious incidents, by start
	// Notices are new_identity notices (severity info: an identity seen
	// for the first time), kept out of the figures above — they report an
	// identity, not a behaviour — and counted here, with those on the
	// agent of a malicious incident.
	Notices, NoticesOnIncidents int
}

// KindNewIdentity is the alert kind of vigil's new-identity notices.
const KindNewIdentity = "new_identity"

// benignHorizon is how long after a benign change false alerts are attributed to it.
const benignHorizon = 24 * time.Hour

// Evaluate scores alerts against the truth.
//
// An alert matches a malicious incident when the agent_ids are equal and the alert's
// window [WindowStart, WindowEnd) overlaps [Start, End+grace); grace is usually one
// detector window. An alert with WindowEnd ≤ WindowStart counts as the instant
// WindowStart. An incident is detected when at least one alert matches it; its time to
// detect is the earliest DetectedAt of its matching alerts minus Start, at least 0
// (an alert without detected_at counts as detected at WindowEnd). Alerts matching no
// malicious incident are false. A false alert whose window overlaps [Start, Start+24h)
// of a benign change to its agent — or, for a fleet_deployment (agent_id "*"), to any
// agent of the change's class (agent_class, else agent_id without its trailing -NN) —
// counts in BenignAlerts, and in BenignCritical when its severity is "critical".
//
// new_identity notices are kept out of every figure and counted in Notices.
//
// Alerts repeating an alert_id (re-emissions of the same alert) are counted once, with
// their earliest detection. agentDays (distinct agents × simulated days) normalises
// FalseAlertsPerAgentDay. Ratios with a zero denominator are 0.
func Evaluate(truth []sim.Incident, alerts []Alert, grace time.Duration, agentDays float64) Report {
	alerts = dedup(alerts)
	var notices []Alert
	alerts = slices.DeleteFunc(alerts, func(a Alert) bool {
		if a.Kind == KindNewIdentity {
			notices = append(notices, a)
			return true
		}
		return false
	})
	r := Report{Alerts: len(alerts), AgentDays: agentDays, PerKind: map[string]KindReport{}, Notices: len(notices)}
	for _, n := range notices {
		for _, inc := range truth {
			if !inc.Benign && inc.AgentID == n.AgentID {
				r.NoticesOnIncidents++
				break
			}
		}
	}

	var mal, ben []sim.Incident
	for _, inc := range truth {
		kr := r.PerKind[inc.Kind]
		kr.Incidents++
		kr.Benign = inc.Benign
		r.PerKind[inc.Kind] = kr
		if inc.Benign {
			ben = append(ben, inc)
		} else {
			mal = append(mal, inc)
		}
	}
	r.Incidents = len(mal)

	first := make([]time.Time, len(mal)) // earliest detection per incident
	matched := make([]int, len(mal))     // matching alerts per incident
	byAgent := map[string][]int{}
	for i, inc := range mal {
		byAgent[inc.AgentID] = append(byAgent[inc.AgentID], i)
	}
	for _, a := range alerts {
		ws, we := alertWindow(a)
		hit := false
		for _, i := range byAgent[a.AgentID] {
			inc := mal[i]
			if !overlaps(ws, we, inc.Start, inc.End.Add(grace)) {
				continue
			}
			hit = true
			matched[i]++
			if d := detectedAt(a); first[i].IsZero() || d.Before(first[i]) {
				first[i] = d
			}
		}
		if hit {
			r.TrueAlerts++
			continue
		}
		r.FalseAlerts++
		if kind, ok := benignFor(a, ws, we, ben); ok {
			r.BenignAlerts++
			if a.Severity == "critical" {
				r.BenignCritical++
			}
			kr := r.PerKind[kind]
			kr.Alerts++
			r.PerKind[kind] = kr
		}
	}

	var ttds []time.Duration
	perKind := map[string][]time.Duration{}
	for i, inc := range mal {
		kr := r.PerKind[inc.Kind]
		kr.Alerts += matched[i]
		if matched[i] == 0 {
			r.Missed = append(r.Missed, inc)
			r.PerKind[inc.Kind] = kr
			continue
		}
		kr.Detected++
		r.PerKind[inc.Kind] = kr
		r.Detected++
		d := max(0, first[i].Sub(inc.Start))
		ttds = append(ttds, d)
		perKind[inc.Kind] = append(perKind[inc.Kind], d)
	}
	for k, kr := range r.PerKind {
		if !kr.Benign {
			kr.Recall = ratio(kr.Detected, kr.Incidents)
			kr.TTDMedian = percentile(perKind[k], 0.5)
			r.PerKind[k] = kr
		}
	}
	sort.SliceStable(r.Missed, func(i, j int) bool {
		if !r.Missed[i].Start.Equal(r.Missed[j].Start) {
			return r.Missed[i].Start.Before(r.Missed[j].Start)
		}
		return r.Missed[i].ID < r.Missed[j].ID
	})
	r.Recall = ratio(r.Detected, r.Incidents)
	r.Precision = ratio(r.TrueAlerts, r.Alerts)
	if agentDays > 0 {
		r.FalseAlertsPerAgentDay = float64(r.FalseAlerts) / agentDays
	}
	r.TTDMedian = percentile(ttds, 0.5)
	r.TTDP90 = percentile(ttds, 0.9)
	return r
}

// dedup keeps one alert per non-empty alert_id, with the earliest detection.
func dedup(alerts []Alert) []Alert {
	seen := map[string]int{}
	out := make([]Alert, 0, len(alerts))
	for _, a := range alerts {
		if a.AlertID == "" {
			out = append(out, a)
			continue
		}
		if i, ok := seen[a.AlertID]; ok {
			if detectedAt(a).Before(detectedAt(out[i])) {
				out[i] = a
			}
			continue
		}
		seen[a.AlertID] = len(out)
		out = append(out, a)
	}
	return out
}

// alertWindow returns the alert's window, widening an empty one to an instant.
func alertWindow(a Alert) (time.Time, time.Time) {
	if !a.WindowEnd.After(a.WindowStart) {
		return a.WindowStart, a.WindowStart.Add(time.Nanosecond)
	}
	return a.WindowStart, a.WindowEnd
}

func detectedAt(a Alert) time.Time {
	if a.DetectedAt.IsZero() {
		return a.WindowEnd
	}
	return a.DetectedAt
}

// overlaps reports whether the half-open intervals [s1, e1) and [s2, e2) intersect.
func overlaps(s1, e1, s2, e2 time.Time) bool { return s1.Before(e2) && s2.Before(e1) }

// benignFor returns the kind of the first benign change the alert falls on.
func benignFor(a Alert, ws, we time.Time, ben []sim.Incident) (string, bool) {
	for _, inc := range ben {
		mine := inc.AgentID == a.AgentID || (inc.AgentID == "*" && alertClass(a) == inc.AgentClass)
		if mine && overlaps(ws, we, inc.Start, inc.Start.Add(benignHorizon)) {
			return inc.Kind, true
		}
	}
	return "", false
}

// alertClass is the alert's agent_class, else derived from agent_id by stripping the
// path and the trailing -NN digits.
func alertClass(a Alert) string {
	if a.AgentClass != "" {
		return a.AgentClass
	}
	id := a.AgentID[strings.LastIndexByte(a.AgentID, '/')+1:]
	trimmed := strings.TrimRight(id, "0123456789")
	if trimmed != id {
		trimmed = strings.TrimSuffix(trimmed, "-")
	}
	return trimmed
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// percentile returns the nearest-rank p-quantile of ds (0 for none).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// WriteTable writes r as an aligned, human-readable table: the overall figures, one
// row per kind (malicious kinds first), then the missed incidents.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	pct := func(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }
	fmt.Fprintf(tw, "incidents\t%d\n", r.Incidents)
	fmt.Fprintf(tw, "detected\t%d\trecall %s\n", r.Detected, pct(r.Recall))
	fmt.Fprintf(tw, "alerts\t%d\ttrue %d, false %d\tprecision %s\n", r.Alerts, r.TrueAlerts, r.FalseAlerts, pct(r.Precision))
	fmt.Fprintf(tw, "false alerts per agent-day\t%.4f\tover %.1f agent-days\n", r.FalseAlertsPerAgentDay, r.AgentDays)
	fmt.Fprintf(tw, "time to detect\tmedian %s\tp90 %s\n", dur(r.TTDMedian), dur(r.TTDP90))
	fmt.Fprintf(tw, "alerts on benign changes\t%d\tcritical %d\n", r.BenignAlerts, r.BenignCritical)
	fmt.Fprintf(tw, "new-identity notices\t%d\ton incidents' agents %d\n", r.Notices, r.NoticesOnIncidents)
	fmt.Fprintln(tw)

	kinds := make([]string, 0, len(r.PerKind))
	for k := range r.PerKind {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		bi, bj := r.PerKind[kinds[i]].Benign, r.PerKind[kinds[j]].Benign
		if bi != bj {
			return !bi
		}
		return kinds[i] < kinds[j]
	})
	fmt.Fprintln(tw, "kind\tincidents\tdetected\trecall\tmedian TTD\talerts")
	for _, k := range kinds {
		kr := r.PerKind[k]
		if kr.Benign {
			fmt.Fprintf(tw, "%s (benign)\t%d\t-\t-\t-\t%d\n", k, kr.Incidents, kr.Alerts)
			continue
		}
		ttd := "-"
		if kr.Detected > 0 {
			ttd = dur(kr.TTDMedian)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%d\n", k, kr.Incidents, kr.Detected, pct(kr.Recall), ttd, kr.Alerts)
	}
	if len(r.Missed) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintf(tw, "missed (%d)\n", len(r.Missed))
		for _, inc := range r.Missed {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", inc.ID, inc.Kind, inc.AgentID,
				inc.Start.UTC().Format(time.RFC3339), dur(inc.End.Sub(inc.Start)), inc.Description)
		}
	}
	return tw.Flush()
}

// dur formats d rounded to the second.
func dur(d time.Duration) string { return d.Round(time.Second).String() }
