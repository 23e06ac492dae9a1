package sinktest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a certificate authority made for one test, and what it signed:
// a server certificate for 127.0.0.1, ::1 and localhost, and a client
// certificate (CN vigil). Keys are ECDSA P-256 (what ClickHouse 18.16's
// OpenSSL, Alertmanager and Go all take), written as PKCS #8 PEM with mode
// 0600; certificates as PEM with mode 0644. Nothing outlives the test.
type PKI struct {
	Dir                    string
	CAFile                 string // the CA's certificate
	ServerCert, ServerKey  string
	ClientCert, ClientKey  string
	CA                     *x509.Certificate
	Pool                   *x509.CertPool // holds CA
	caKey                  *ecdsa.PrivateKey
	serverPair, clientPair tls.Certificate
}

// NewPKI generates a CA named name and its two certificates in
// t.TempDir(), valid from an hour ago for a day.
func NewPKI(t testing.TB, name string) *PKI {
	t.Helper()
	p := &PKI{Dir: t.TempDir()}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.CA, _ = x509.ParseCertificate(der)
	p.caKey = key
	p.Pool = x509.NewCertPool()
	p.Pool.AddCert(p.CA)
	p.CAFile = p.write(t, "ca.pem", pemBlock("CERTIFICATE", der), 0o644)
	p.ServerCert, p.ServerKey, p.serverPair = p.issue(t, "server", x509.ExtKeyUsageServerAuth)
	p.ClientCert, p.ClientKey, p.clientPair = p.issue(t, "vigil", x509.ExtKeyUsageClientAuth)
	return p
}

// issue signs a certificate for cn with the given use, for the loopback
// addresses and localhost, and writes it and its key.
func (p *PKI) issue(t testing.TB, cn string, use x509.ExtKeyUsage) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{use},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", kder)
	pair, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, cn+".pem", certPEM, 0o644), p.write(t, cn+"-key.pem", keyPEM, 0o600), pair
}

// ServerTLS is a server configuration with the server certificate that
// requires and verifies a client certificate signed by the CA.
func (p *PKI) ServerTLS() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{p.serverPair},
		ClientCAs: p.Pool, ClientAuth: tls.RequireAndVerifyClientCert}
}

// ClientTLS is a client configuration that trusts the CA and presents the
// client certificate.
func (p *PKI) ClientTLS() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: p.Pool, Certificates: []tls.Certificate{p.clientPair}}
}

func (p *PKI) write(t testing.TB, name string, b []byte, mode os.FileMode) string {
	t.Helper()
	f := filepath.Join(p.Dir, name)
	if err := os.WriteFile(f, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return f
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
