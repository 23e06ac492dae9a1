// Package sinktest starts the real servers vigil's sinks talk to
// (ClickHouse, Alertmanager) for tests: on loopback, on free ports, with
// temporary directories, stopped when the test ends. The servers come from
// Debian packages that `make deps` installs. When one is missing a test
// fails under CI (CI set) and is skipped otherwise, with how to install it.
package sinktest

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Binary returns the path of the first of names found in PATH, /usr/sbin or
// /usr/bin.
func Binary(t testing.TB, pkg string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, dir := range []string{"/usr/sbin/", "/usr/bin/"} {
			if _, err := os.Stat(dir + n); err == nil {
				return dir + n
			}
		}
	}
	msg := names[0] + " not found: run `make deps` (Debian package " + pkg + ")"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitTCP waits until addr accepts connections or timeout passes.
func WaitTCP(addr string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// terminate sends SIGTERM to a server started by cmd and waits for it to
// exit (exited closes then), killing it after 10 s.
func terminate(cmd *exec.Cmd, exited <-chan struct{}) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}
