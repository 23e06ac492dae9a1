package sinktest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ClickHouse is a clickhouse-server started for tests: loopback only, free
// native and HTTP ports, its data, logs and configuration in a temporary
// directory, user "default" without a password. Its methods are safe for
// concurrent use; Stop and Start are meant for one test at a time.
type ClickHouse struct {
	dir                string
	server, client     string
	tcpPort, httpPort  int
	securePort         int  // tcp_port_secure, with pki
	pki                *PKI // TLS on securePort
	mu                 sync.Mutex
	cmd                *exec.Cmd
	exited             chan struct{}
	stdout, stderrFile *os.File
}

// StartClickHouse starts a clickhouse-server of t's own, stopped when t
// ends (SIGTERM, then SIGKILL after 10 s). It skips t (fails it under CI)
// when the Debian packages are missing. Tests that do not stop the server
// should share one with SharedClickHouse: start-up and shutdown take
// seconds.
func StartClickHouse(t testing.TB) *ClickHouse {
	t.Helper()
	c := newClickHouse(t, t.TempDir())
	t.Cleanup(func() { c.stop() })
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	return c
}

// StartClickHouseTLS is StartClickHouse with, besides the plain native port
// (for Query), a TLS one (SecureAddr: tcp_port_secure) that presents pki's
// server certificate and requires a client certificate signed by pki's CA
// (openSSL.server.verificationMode strict).
func StartClickHouseTLS(t testing.TB, pki *PKI) *ClickHouse {
	t.Helper()
	c := newClickHouse(t, t.TempDir())
	c.pki, c.securePort = pki, FreePort(t)
	t.Cleanup(func() { c.stop() })
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	return c
}

var shared struct {
	once sync.Once
	c    *ClickHouse
	err  error
}

// SharedClickHouse returns the test binary's shared clickhouse-server,
// started on first use in a temporary directory of its own. Each test
// should use a database of its own on it, and must not stop it. The
// package's TestMain calls StopSharedClickHouse after m.Run; if it does
// not, the server ends with the test binary all the same (parent-death
// signal) but its directory stays behind.
func SharedClickHouse(t testing.TB) *ClickHouse {
	t.Helper()
	server := Binary(t, "clickhouse-server", "clickhouse-server")
	Binary(t, "clickhouse-client", "clickhouse-client")
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-clickhouse-")
		if err != nil {
			shared.err = err
			return
		}
		c := newClickHouseAt(server, dir, FreePort(t), FreePort(t))
		if err := c.start(); err != nil {
			c.stop()
			os.RemoveAll(dir)
			shared.err = err
			return
		}
		shared.c = c
	})
	if shared.err != nil {
		t.Fatal("shared clickhouse-server:", shared.err)
	}
	return shared.c
}

// StopSharedClickHouse stops the shared server, if one was started, and
// removes its directory.
func StopSharedClickHouse() {
	if shared.c != nil {
		shared.c.stop()
		os.RemoveAll(shared.c.dir)
	}
}

func newClickHouse(t testing.TB, dir string) *ClickHouse {
	t.Helper()
	server := Binary(t, "clickhouse-server", "clickhouse-server")
	Binary(t, "clickhouse-client", "clickhouse-client")
	return newClickHouseAt(server, dir, FreePort(t), FreePort(t))
}

func newClickHouseAt(server, dir string, tcpPort, httpPort int) *ClickHouse {
	client := "clickhouse-client"
	if p, err := exec.LookPath(client); err == nil {
		client = p
	} else if _, err := os.Stat("/usr/bin/" + client); err == nil {
		client = "/usr/bin/" + client
	}
	return &ClickHouse{dir: dir, server: server, client: client, tcpPort: tcpPort, httpPort: httpPort}
}

// Addr is the native-protocol address, 127.0.0.1:port.
func (c *ClickHouse) Addr() string { return "127.0.0.1:" + strconv.Itoa(c.tcpPort) }

// SecureAddr is the TLS native-protocol address (StartClickHouseTLS).
func (c *ClickHouse) SecureAddr() string { return "127.0.0.1:" + strconv.Itoa(c.securePort) }

// Dir is the server's directory: configuration, data and logs.
func (c *ClickHouse) Dir() string { return c.dir }

// Query runs sql with clickhouse-client (a real client, separate from the
// code under test) and returns its output, tab-separated. sql may hold
// several statements separated by semicolons. It fails t when the client
// fails.
func (c *ClickHouse) Query(t testing.TB, sql string) string {
	t.Helper()
	out, err := c.Run(sql)
	if err != nil {
		t.Fatalf("clickhouse-client: %v\n%s\nquery: %s", err, out, sql)
	}
	return out
}

// Run is Query that returns the client's error (with its output) instead
// of failing a test.
func (c *ClickHouse) Run(sql string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := append([]string{"--host", "127.0.0.1", "--port", strconv.Itoa(c.tcpPort), "--multiquery", "--query", sql}, args...)
	cmd := exec.CommandContext(ctx, c.client, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for
// it to exit. Its data stays: Start brings it back on the same ports.
func (c *ClickHouse) Stop(t testing.TB) {
	t.Helper()
	c.stop()
}

// Start starts a stopped server again, on the same ports and data.
func (c *ClickHouse) Start(t testing.TB) {
	t.Helper()
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
}

func (c *ClickHouse) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return nil
	}
	conf := filepath.Join(c.dir, "config.xml")
	if _, err := os.Stat(conf); err != nil {
		if err := c.writeConfig(); err != nil {
			return err
		}
	}
	var err error
	if c.stdout, err = os.OpenFile(filepath.Join(c.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return err
	}
	if c.stderrFile, err = os.OpenFile(filepath.Join(c.dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return err
	}
	cmd := exec.Command(c.server, "--config-file="+conf)
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = c.stdout, c.stderrFile
	// Its own process group, and killed with the test binary if that
	// dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start clickhouse-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	c.cmd, c.exited = cmd, exited
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			c.cmd = nil
			c.stdout.Close()
			c.stderrFile.Close()
			return fmt.Errorf("clickhouse-server exited at start-up:\n%s", c.logTail())
		default:
		}
		if WaitTCP(c.Addr(), 100*time.Millisecond) {
			if _, err := c.Run("SELECT 1"); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			c.stopLocked()
			return fmt.Errorf("clickhouse-server did not accept queries within 30 s:\n%s", c.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *ClickHouse) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopLocked()
}

func (c *ClickHouse) stopLocked() {
	if c.cmd == nil {
		return
	}
	terminate(c.cmd, c.exited)
	c.cmd = nil
	c.stdout.Close()
	c.stderrFile.Close()
}

// logTail is the end of the server's error log and stderr, for failures.
func (c *ClickHouse) logTail() string {
	var b bytes.Buffer
	for _, f := range []string{"server.err.log", "stderr.log"} {
		data, _ := os.ReadFile(filepath.Join(c.dir, f))
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		b.Write(data)
	}
	return b.String()
}

// writeConfig writes a minimal configuration that the Debian 18.16 server
// and current servers accept: every path inside dir, loopback only, UTC,
// small caches, user "default" without a password from loopback.
func (c *ClickHouse) writeConfig() error {
	for _, d := range []string{"data", "tmp", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
			return err
		}
	}
	secure := ""
	if c.pki != nil {
		secure = fmt.Sprintf(`
    <tcp_port_secure>%d</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>%s</certificateFile>
            <privateKeyFile>%s</privateKeyFile>
            <caConfig>%s</caConfig>
            <verificationMode>strict</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>false</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
        </server>
    </openSSL>`, c.securePort, c.pki.ServerCert, c.pki.ServerKey, c.pki.CAFile)
	}
	config := fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>%[1]s/server.log</log>
        <errorlog>%[1]s/server.err.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>%[2]d</tcp_port>
    <http_port>%[3]d</http_port>%[4]s
    <path>%[1]s/data/</path>
    <tmp_path>%[1]s/tmp/</tmp_path>
    <user_files_path>%[1]s/user_files/</user_files_path>
    <format_schema_path>%[1]s/format_schemas/</format_schema_path>
    <users_config>%[1]s/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mlock_executable>false</mlock_executable>
    <shutdown_wait_unfinished>1</shutdown_wait_unfinished>
</yandex>
`, c.dir, c.tcpPort, c.httpPort, secure)
	users := `<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <!-- idle connections notice a shutdown within 1 s, not 10 -->
            <poll_interval>1</poll_interval>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
`
	if err := os.WriteFile(filepath.Join(c.dir, "config.xml"), []byte(config), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.dir, "users.xml"), []byte(users), 0o644)
}
