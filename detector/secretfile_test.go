package detector

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Private keys and passwords that other users may read are refused, with an
// error naming the field, the file and the fix; the content never shows.
// Run as root (CI), the files belong to root, so group read is allowed.
func TestCheckSecretFileModes(t *testing.T) {
	dir := t.TempDir()
	root := os.Geteuid() == 0
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true}, {0o400, true}, {0o700, true},
		{0o640, root}, {0o440, root}, {0o660, false}, {0o620, false},
		{0o644, false}, {0o604, false}, {0o602, false}, {0o666, false}, {0o601, false},
	} {
		f := filepath.Join(dir, fmt.Sprintf("secret-%04o", tc.mode))
		if err := os.WriteFile(f, []byte("hunter2\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, tc.mode); err != nil {
			t.Fatal(err)
		}
		b, err := ReadSecretFile("kafka.sasl.password_file", f)
		if tc.ok {
			if err != nil || string(b) != "hunter2\n" {
				t.Errorf("mode %04o: %q, %v; want it read", tc.mode, b, err)
			}
			continue
		}
		if !errors.Is(err, ErrSecretFileMode) {
			t.Errorf("mode %04o: err %v, want ErrSecretFileMode", tc.mode, err)
			continue
		}
		for _, want := range []string{"kafka.sasl.password_file", f, "chmod 600 " + f, fmt.Sprintf("%04o", tc.mode)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("mode %04o: %q lacks %q", tc.mode, err, want)
			}
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("mode %04o: the error shows the secret: %v", tc.mode, err)
		}
	}
	// Symbolic links (a Kubernetes Secret volume's ..data) are followed.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(filepath.Join(dir, "secret-0600"), link); err != nil {
		t.Fatal(err)
	}
	if err := CheckSecretFile("f", link); err != nil {
		t.Errorf("symlink to a 0600 file: %v", err)
	}
	if err := CheckSecretFile("f", dir); err == nil {
		t.Error("a directory passed as a secret file")
	}
	if err := CheckSecretFile("f", filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// Every loader of a secret applies the rule: the Kafka TLS key, the SASL
// password and the revocation signing key.
func TestSecretLoadersRefuseLooseFiles(t *testing.T) {
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := testCertAndKey(t)
	ca := writeMode(t, dir, "ca.pem", caPEM, 0o644)
	cert := writeMode(t, dir, "cert.pem", certPEM, 0o644)
	key := writeMode(t, dir, "key.pem", keyPEM, 0o600)
	pw := writeMode(t, dir, "pw", []byte("pw\n"), 0o600)
	cfg := DefaultRuntimeConfig()
	cfg.TLS = TLSConfig{Enabled: true, CAFile: ca, CertFile: cert, KeyFile: key}
	cfg.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u", PasswordFile: pw}
	if _, err := cfg.Dialer(); err != nil {
		t.Fatalf("0600 key and password: %v", err)
	}
	for _, tc := range []struct{ file, field string }{{key, "kafka.tls.key_file"}, {pw, "kafka.sasl.password_file"}} {
		os.Chmod(tc.file, 0o644)
		if _, err := cfg.Dialer(); !errors.Is(err, ErrSecretFileMode) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s 0644: %v", tc.field, err)
		}
		os.Chmod(tc.file, 0o600)
	}
	sk := filepath.Join(dir, "signing.pem")
	writeMode(t, dir, "signing.pem", keyPEM, 0o644)
	if _, err := LoadSigner("k", sk); !errors.Is(err, ErrSecretFileMode) || !strings.Contains(err.Error(), "signing key") {
		t.Errorf("signing key 0644: %v", err)
	}
}

// IsTLSConfigError tells verification failures (either side's) from
// network errors.
func TestIsTLSConfigError(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	plain := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer plain.Close()
	get := func(url string, tc *tls.Config) error {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	for name, err := range map[string]error{
		"unknown CA":            get(srv.URL, &tls.Config{}),
		"wrong name":            get(srv.URL, &tls.Config{RootCAs: pool, ServerName: "other.example"}),
		"no client certificate": get(srv.URL, &tls.Config{RootCAs: pool}),
		"plain HTTP server":     get(strings.Replace(plain.URL, "http:", "https:", 1), &tls.Config{}),
	} {
		if err == nil || !IsTLSConfigError(err) {
			t.Errorf("%s: %v: not a TLS configuration error", name, err)
		}
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if err := get("https://"+addr, &tls.Config{}); err == nil || IsTLSConfigError(err) {
		t.Errorf("connection refused: %v classified as a TLS configuration error", err)
	}
}

func writeMode(t *testing.T, dir, name string, b []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// testCertAndKey returns a self-signed certificate (as its own CA) and its
// key (PKCS #8 PEM; an ECDSA key, so not a signing key).
func testCertAndKey(t *testing.T) (ca, cert, key []byte) {
	t.Helper()
	dir := t.TempDir()
	c := ktSelfSigned(t, dir)
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	return certPEM, certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
