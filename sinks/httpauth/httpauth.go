// Package httpauth holds what the HTTP sinks (Alertmanager, webhook) share
// to reach their servers: TLS from files and credentials read from files,
// never from the configuration itself and never into errors or logs. Key
// and password files that other users may read are refused.
package httpauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/vigil-sec/vigil/detector"
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
// The key file must not be accessible to other users
// (detector.CheckSecretFile). Errors name the fields and files, never their
// content.
func (t TLSConfig) Config() (*tls.Config, error) {
	return detector.ClientTLS("tls", t.CAFile, t.CertFile, t.KeyFile, t.ServerName, t.InsecureSkipVerify)
}

// ReadSecret reads a secret file without its surrounding whitespace; an
// empty one, or one other users may read (detector.CheckSecretFile), is an
// error. Errors name field and file, never the content.
func ReadSecret(field, file string) (string, error) {
	b, err := detector.ReadSecretFile(field, file)
	if err != nil {
		return "", err
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "", fmt.Errorf("%s: %s is empty", field, file)
	}
	return string(b), nil
}

// DiagnoseTLS is called after a request to an https URL failed without a
// response and without a TLS error of its own: it returns the TLS
// configuration error the failure hid (see detector.DiagnoseTLS: a client
// certificate the server refused after a TLS 1.3 handshake), or nil when
// there is none to find (http URLs, network errors).
func DiagnoseTLS(ctx context.Context, rawURL string, tc *tls.Config) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || tc == nil {
		return nil
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	if err := detector.DiagnoseTLS(ctx, addr, tc, time.Second); detector.IsTLSConfigError(err) {
		return err
	}
	return nil
}
