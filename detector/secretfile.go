package detector

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// ErrSecretFileMode is wrapped by the error of CheckSecretFile (and of
// everything that reads a private key or password through it) for a file
// that users other than its owner may read.
var ErrSecretFileMode = errors.New("secret file is accessible to other users")

// CheckSecretFile refuses a private key or password file that other users
// could read or change. The rule is PostgreSQL's for its server key: other
// users get no permission at all; the file's group gets none either (mode
// 0600 or 0400), except read access when the file belongs to root (mode
// 0640 or 0440 owned by root: a Kubernetes Secret volume with fsGroup gives
// a non-root vigil its keys that way). field names the configuration field
// in the error, which also says how to fix it; the content is never read.
func CheckSecretFile(field, file string) error {
	st, err := os.Stat(file) // follows symbolic links (Kubernetes' ..data)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: %s is not a regular file", field, file)
	}
	perm := st.Mode().Perm()
	allowed := os.FileMode(0o700)
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid == 0 {
		allowed = 0o740
	}
	if perm&^allowed == 0 {
		return nil
	}
	fix := fmt.Sprintf("chmod 600 %s", file)
	if allowed == 0o740 {
		fix += " (or 640: it belongs to root)"
	}
	return fmt.Errorf("%s: %s has mode %04o: a private key or password must not be accessible to other users (group or others); %s: %w",
		field, file, uint32(perm), fix, ErrSecretFileMode)
}

// ReadSecretFile reads a private key or password file after CheckSecretFile.
// Errors name field and file, never the content.
func ReadSecretFile(field, file string) ([]byte, error) {
	if err := CheckSecretFile(field, file); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return b, nil
}

// ClientTLS builds the client side of TLS (1.2 at least) from files: the CA
// bundle that signs the servers' certificates (caFile; "" for the system's
// roots) and an optional client certificate and key (mTLS), whose key file
// must pass CheckSecretFile. field prefixes the errors ("kafka.tls"), which
// name files but never their content. serverName overrides the name
// verified in the servers' certificates; insecureSkipVerify (tests only)
// verifies nothing.
func ClientTLS(field, caFile, certFile, keyFile, serverName string, insecureSkipVerify bool) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: insecureSkipVerify} //nolint:gosec // opt-in, documented as tests only
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", field, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_file: %s holds no PEM certificate", field, caFile)
		}
		tc.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return nil, fmt.Errorf("%s.cert_file: cert_file and key_file go together", field)
		}
		key, err := ReadSecretFile(field+".key_file", keyFile)
		if err != nil {
			return nil, err
		}
		cert, err := os.ReadFile(certFile)
		if err != nil {
			return nil, fmt.Errorf("%s.cert_file: %w", field, err)
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("%s.cert_file, %s.key_file: %s, %s: not a matching PEM certificate and key", field, field, certFile, keyFile)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// IsTLSConfigError reports whether err is a TLS failure that the
// configuration causes and retrying cannot fix: this side does not trust the
// server's certificate (unknown CA, wrong name, expired), the server refused
// this side's certificate or its absence (a certificate alert from the
// peer), or the server does not speak TLS at all. Sinks treat these as
// permanent (detector.ErrPermanent): vigil stops with the error instead of
// retrying a handshake that fails the same way every time; fix the files or
// the server, then restart.
func IsTLSConfigError(err error) bool { return tlsConfigFix(err) != "" }

// TLSConfigFix says what to check for a TLS configuration error
// (IsTLSConfigError), with field naming the TLS settings ("tls",
// "clickhouse.tls"); "" for other errors.
func TLSConfigFix(field string, err error) string {
	switch tlsConfigFix(err) {
	case "server":
		return "vigil does not trust the server's certificate: check " + field + ".ca_file (the CA that signs it) and " + field + ".server_name"
	case "client":
		return "the server refused vigil's client certificate, or its absence: check " + field + ".cert_file and " + field + ".key_file against the server's client CA"
	case "plain":
		return "the server does not speak TLS there: use its TLS port, or turn TLS off"
	}
	return ""
}

func tlsConfigFix(err error) string {
	if err == nil {
		return ""
	}
	var (
		verr *tls.CertificateVerificationError
		ua   x509.UnknownAuthorityError
		he   x509.HostnameError
		ci   x509.CertificateInvalidError
		rh   tls.RecordHeaderError
	)
	if errors.As(err, &verr) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) {
		return "server"
	}
	if errors.As(err, &rh) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") { // net/http's RecordHeaderError
		return "plain"
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" && op.Err != nil {
		switch op.Err.Error() {
		case "tls: bad certificate", "tls: unsupported certificate", "tls: revoked certificate",
			"tls: expired certificate", "tls: unknown certificate", "tls: unknown certificate authority",
			"tls: access denied", "tls: certificate required":
			return "client"
		case "tls: handshake failure", "tls: protocol version not supported":
			return "server"
		}
	}
	return ""
}

// DiagnoseTLS connects to addr (host:port) with tc and reports a TLS
// failure the connection hides: with TLS 1.3 the client's handshake ends
// before the server has checked the client certificate, so a server that
// refuses it (or its absence) only says so afterwards, and an HTTP client
// reports a broken connection instead. DiagnoseTLS completes the handshake,
// sends nothing, and waits up to wait for the server's alert; it returns
// the handshake's or the alert's error, or nil when the server kept the
// connection open. Sinks call it after a request failed without a response,
// to tell a configuration error (IsTLSConfigError) from a network one.
func DiagnoseTLS(ctx context.Context, addr string, tc *tls.Config, wait time.Duration) error {
	tc = tc.Clone()
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return err
		}
		tc.ServerName = host
	}
	tc.NextProtos = []string{"http/1.1"} // no HTTP/2 preface from the server
	ctx, cancel := context.WithTimeout(ctx, wait+5*time.Second)
	defer cancel()
	d := &tls.Dialer{Config: tc}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(wait))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}
