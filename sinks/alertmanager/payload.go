package alertmanager

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vigil-sec/vigil/detector"
)

// postableAlert is one element of the API v2 POST /api/v2/alerts body.
type postableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// Label names.
const (
	LabelAlertName  = "alertname"
	LabelAgentID    = "agent_id"
	LabelAgentClass = "agent_class"
	LabelSeverity   = "severity"
	LabelKind       = "kind"
)

// labels returns the label set of a's Alertmanager alert. Alertmanager
// treats an empty value as an absent label, so an empty agent_class is
// left out.
func labels(alertName string, a *detector.Alert) map[string]string {
	l := map[string]string{
		LabelAlertName: alertName,
		LabelAgentID:   clean(a.AgentID),
		LabelSeverity:  a.Severity.String(),
		LabelKind:      clean(a.Kind),
	}
	if a.AgentClass != "" {
		l[LabelAgentClass] = clean(a.AgentClass)
	}
	return l
}

// labelKey identifies a label set in the sink's memory.
func labelKey(a *detector.Alert) string {
	return a.AgentID + "\xff" + a.AgentClass + "\xff" + a.Kind + "\xff" + a.Severity.String()
}

// clean keeps label and annotation values valid UTF-8, which Alertmanager
// requires.
func clean(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// maxID bounds an id taken from events (agent_id, agent_class) wherever the
// sink puts it: labels, the summary, generatorURL, and the sink's own
// memory. An event's fields are its producer's, up to the decoder's 64 KiB,
// and Alertmanager keeps each in every alert, re-send and notification: at
// 60 KiB an alert is about 120 KB on the wire, and the sink remembers up to
// MaxActive of them.
const maxID = 512

// boundID returns id, or, when it is longer than maxID bytes, its start cut
// on a rune boundary, "…" and 16 hex digits of its SHA-256: at most maxID
// bytes, and distinct ids stay distinct.
func boundID(id string) string {
	if len(id) <= maxID {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	const mark = "…"
	cut := maxID - len(mark) - 16
	for cut > 0 && !utf8.RuneStart(id[cut]) {
		cut--
	}
	return id[:cut] + mark + hex.EncodeToString(sum[:8])
}

// bounded returns a with its ids bounded (boundID): a itself when they are
// short, else a copy (a is shared with the other sinks and never changed).
func bounded(a *detector.Alert) *detector.Alert {
	if len(a.AgentID) <= maxID && len(a.AgentClass) <= maxID {
		return a
	}
	b := *a
	b.AgentID, b.AgentClass = boundID(a.AgentID), boundID(a.AgentClass)
	return &b
}

// annotations describes a for an analyst.
func annotations(a *detector.Alert) map[string]string {
	m := map[string]string{
		"summary":      clean(summary(a)),
		"alert_id":     a.AlertID,
		"window_start": a.WindowStart.UTC().Format(time.RFC3339),
		"window_end":   a.WindowEnd.UTC().Format(time.RFC3339),
		"detected_at":  a.DetectedAt.UTC().Format(time.RFC3339),
		"score":        num(a.Score),
		"baseline":     a.Baseline.Source + " (" + strconv.Itoa(a.Baseline.Windows) + " windows)",
	}
	if len(a.Reasons) > 0 {
		var sb strings.Builder
		sb.WriteString("Top reasons (feature: value, expected, z, contribution):")
		for _, r := range a.Reasons {
			sb.WriteString("\n")
			sb.WriteString(r.Feature)
			sb.WriteString(": value ")
			sb.WriteString(num(r.Value))
			sb.WriteString(", expected ")
			sb.WriteString(num(r.Expected))
			sb.WriteString(", z ")
			sb.WriteString(num(r.Z))
			sb.WriteString(", contribution ")
			sb.WriteString(num(r.Contribution))
		}
		m["description"] = clean(sb.String())
		if js, err := json.Marshal(a.Reasons); err == nil {
			m["reasons"] = clean(string(js))
		}
	}
	return m
}

// summary is one line: "agent X (class) scored 93 (critical): new_targets
// 14 vs expected 0.2 (z 9.1)".
func summary(a *detector.Alert) string {
	var sb strings.Builder
	sb.WriteString("agent ")
	sb.WriteString(a.AgentID)
	if a.AgentClass != "" {
		sb.WriteString(" (")
		sb.WriteString(a.AgentClass)
		sb.WriteString(")")
	}
	sb.WriteString(" scored ")
	sb.WriteString(num(a.Score))
	sb.WriteString(" (")
	sb.WriteString(a.Severity.String())
	sb.WriteString(")")
	if len(a.Reasons) > 0 {
		r := a.Reasons[0]
		sb.WriteString(": ")
		sb.WriteString(r.Feature)
		sb.WriteString(" ")
		sb.WriteString(num(r.Value))
		sb.WriteString(" vs expected ")
		sb.WriteString(num(r.Expected))
		sb.WriteString(" (z ")
		sb.WriteString(num(r.Z))
		sb.WriteString(")")
	}
	return sb.String()
}

// num formats a number for people: whole numbers and numbers from 100 up
// without decimals, from 1 up with one decimal, below 1 with two
// significant digits.
func num(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return strconv.FormatFloat(v, 'g', -1, 64)
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 1:
		return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
	default:
		return strconv.FormatFloat(v, 'g', 2, 64)
	}
}
