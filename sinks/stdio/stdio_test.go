package stdio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
)

func TestWritesAlertsAndDeadLetters(t *testing.T) {
	var out, errb bytes.Buffer
	s := New(&out, &errb)
	b := detector.Batch{
		Alerts: []*detector.Alert{{AlertID: "a1", AgentID: "x", WindowStart: time.Unix(0, 0), Severity: detector.SeverityCritical}},
		DeadLetters: []detector.DeadLetter{{Topic: "agent-events", Partition: 2, Offset: 7, Key: []byte("k"),
			Reason: "bad_json", Detail: `malformed "JSON"`}},
		Windows: []detector.WindowRecord{{AgentID: "x"}}, // not written here
	}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	var a map[string]any
	if err := json.Unmarshal(out.Bytes(), &a); err != nil || a["alert_id"] != "a1" || a["severity"] != "critical" {
		t.Errorf("alert line %q: %v", out.String(), err)
	}
	if want := `dead-letter topic=agent-events partition=2 offset=7 reason=bad_json key="k" value_size=0 value_sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 detail="malformed \"JSON\""` + "\n"; errb.String() != want {
		t.Errorf("dead letter line\n got %q\nwant %q", errb.String(), want)
	}
}

func TestClosedOutputIsPermanent(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	err = New(f, nil).Write(context.Background(), detector.Batch{Alerts: []*detector.Alert{{AlertID: "a"}}})
	if !errors.Is(err, detector.ErrPermanent) || !strings.Contains(err.Error(), "alerts") {
		t.Errorf("write to a closed file: %v, want a permanent error", err)
	}
}
