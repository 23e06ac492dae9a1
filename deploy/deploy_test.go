// Package deploy holds deployment files; its tests check them with the
// real tools (promtool, amtool) from the Debian packages `make deps`
// installs.
package deploy

import (
	"os/exec"
	"testing"

	"github.com/vigil-sec/vigil/sinks/sinktest"
)

func tool(t *testing.T, pkg, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(sinktest.Binary(t, pkg, name), args...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestPrometheusRules(t *testing.T) {
	tool(t, "prometheus", "promtool", "check", "rules", "prometheus/vigil-rules.yml")
	tool(t, "prometheus", "promtool", "test", "rules", "prometheus/vigil-rules.test.yml")
}

func TestAlertmanagerConfig(t *testing.T) {
	tool(t, "prometheus-alertmanager", "amtool", "check-config", "alertmanager/alertmanager.yml")
}
