package clickhouse

import (
	"crypto/tls"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/vigil-sec/vigil/detector"
)

// Config configures the ClickHouse sink. Start from DefaultConfig.
type Config struct {
	// Addr lists native-protocol addresses, host:port (default
	// ["127.0.0.1:9000"]); connections go to the first that answers.
	Addr []string `yaml:"addr"`
	// Database is created if missing (default "vigil"). Letters, digits
	// and underscores.
	Database string `yaml:"database"`
	// Username (default "default").
	Username string `yaml:"username"`
	// PasswordFile is a file holding the password (a trailing newline is
	// ignored); PasswordEnv names an environment variable holding it. At
	// most one; neither means no password. The password never appears in
	// the configuration, on the command line, or in logs.
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// DialTimeout bounds connecting to a server (default 5s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// WriteTimeout bounds one Write, all its inserts (default 30s). A
	// Write that times out is retried by the caller.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// TLS for the native protocol (the server's tcp_port_secure).
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig configures TLS to ClickHouse.
type TLSConfig struct {
	// Enabled turns TLS on (with the system roots unless CAFile is set).
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the CAs that sign the servers' certificates.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// servers that require one (openSSL.server.verificationMode strict).
	// The key file must not be accessible to other users (mode 0600, or
	// 0640 owned by root).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the servers' certificates.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables certificate verification (tests only).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Addr:         []string{"127.0.0.1:9000"},
		Database:     DefaultDatabase,
		Username:     "default",
		DialTimeout:  5 * time.Second,
		WriteTimeout: 30 * time.Second,
	}
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate reports the first invalid field.
func (c Config) Validate() error {
	bad := func(field, msg string) error { return &detector.ConfigError{Field: "clickhouse." + field, Msg: msg} }
	switch {
	case len(c.Addr) == 0:
		return bad("addr", "at least one host:port is required")
	case !identifier.MatchString(c.Database):
		return bad("database", fmt.Sprintf("%q: want letters, digits and underscores, not starting with a digit", c.Database))
	case c.Username == "":
		return bad("username", "required (ClickHouse's is \"default\")")
	case c.PasswordFile != "" && c.PasswordEnv != "":
		return bad("password_file", "set password_file or password_env, not both")
	case c.DialTimeout <= 0:
		return bad("dial_timeout", "must be > 0")
	case c.WriteTimeout <= 0:
		return bad("write_timeout", "must be > 0")
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return bad("tls.cert_file", "cert_file and key_file go together")
	case !c.TLS.Enabled && c.TLS != TLSConfig{}:
		return bad("tls.enabled", "TLS options are set but tls.enabled is false")
	}
	for _, a := range c.Addr {
		if i := strings.LastIndexByte(a, ':'); i <= 0 || i == len(a)-1 {
			return bad("addr", fmt.Sprintf("%q: want host:port", a))
		}
	}
	return nil
}

// password reads the password from PasswordFile or PasswordEnv. Errors
// name the file or variable, never the content.
func (c Config) password() (string, error) {
	switch {
	case c.PasswordFile != "":
		b, err := detector.ReadSecretFile("clickhouse.password_file", c.PasswordFile)
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case c.PasswordEnv != "":
		p, ok := os.LookupEnv(c.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("clickhouse.password_env: environment variable %s is not set", c.PasswordEnv)
		}
		return p, nil
	}
	return "", nil
}

func (t TLSConfig) config() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	return detector.ClientTLS("clickhouse.tls", t.CAFile, t.CertFile, t.KeyFile, t.ServerName, t.InsecureSkipVerify)
}
