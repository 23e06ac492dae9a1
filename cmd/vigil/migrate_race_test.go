package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// Every member of a consumer group starts at once: two `vigil run` against
// a fresh ClickHouse database both migrate it and run (issue 12: one exited
// with "migration 2 (windows: denied_unfamiliar): code: 44 … column with
// this name already exists"). A few rounds, each on a fresh database, so
// that the race is likely to be hit.
func TestRunInstancesMigrateClickHouseTogether(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ch := sinktest.StartClickHouse(t)
	addr := startDevbroker(t, "--topic", "agent-events:2")
	const rounds, instances = 3, 2
	for round := range rounds {
		db := fmt.Sprintf("migrate_race_%d", round)
		conf := writeFile(t, t.TempDir(), "vigil.yaml", fmt.Sprintf(`
outputs:
  clickhouse:
    enabled: true
    addr: [%q]
    database: %s
`, ch.Addr(), db))
		start := make(chan struct{})
		rcs := make([]chan int, instances)
		stderrs := make([]*syncBuffer, instances)
		for i := range instances {
			rcs[i], stderrs[i] = make(chan int, 1), &syncBuffer{}
			go func() {
				<-start
				rcs[i] <- run([]string{"run", "--config", conf, "--kafka.brokers", addr, "--kafka.group", db,
					"--web.listen-address", "127.0.0.1:0"}, nil, &syncBuffer{}, stderrs[i])
			}()
		}
		close(start)
		// The web address is logged after the sinks are built, so after
		// the migrations.
		for i := range instances {
			waitFor(t, 30*time.Second, "each instance to start or exit", func() bool {
				return strings.Contains(stderrs[i].String(), "web=http://") || len(rcs[i]) > 0
			})
		}
		// SIGTERM stops the instances still running; with none, nothing
		// would catch it.
		running := false
		for i := range instances {
			running = running || len(rcs[i]) == 0
		}
		if running {
			if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
		for i := range instances {
			select {
			case code := <-rcs[i]:
				if code != 0 {
					t.Errorf("round %d: instance %d exited %d:\n%s", round, i, code, tail(stderrs[i].String(), 2000))
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: instance %d did not exit within 30 s of SIGTERM", round, i)
			}
		}
		if got := ch.Query(t, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s'", db)); got != "6\n" {
			t.Errorf("round %d: %q tables, want 6", round, got)
		}
	}
}
