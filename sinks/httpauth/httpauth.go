// Package httpauth holds what the HTTP sinks (Alertmanager, webhook) share
// to reach their servers: TLS from files and credentials read from files,
// never from the configuration itself and never into errors or logs.
package httpauth

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// BasicAuth is HTTP basic authentication; the password comes from a file
// (surrounding whitespace ignored), read again for every request so that a
// rotated password is picked up.
type BasicAuth struct {
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
}

// TLSConfig configures the client side of TLS.
type TLSConfig struct {
	// CAFile is a PEM bundle of the CAs that sign the server's certificate
	// (default: the system's).
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and key (mTLS).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name verified in the server certificate.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables server certificate verification (tests
	// only).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Config reads the files and returns the tls.Config (TLS 1.2 at least).
// Errors name the fields and files, never their content.
func (t TLSConfig) Config() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in, documented as tests only
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file, tls.key_file: %s, %s: not a matching PEM certificate and key", t.CertFile, t.KeyFile)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// ReadSecret reads a secret file without its surrounding whitespace; an
// empty one is an error. Errors name field and file, never the content.
func ReadSecret(field, file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "", fmt.Errorf("%s: %s is empty", field, file)
	}
	return string(b), nil
}
