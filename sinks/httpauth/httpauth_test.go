package httpauth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "pw")
	os.WriteFile(f, []byte("  s3cret\n"), 0o600)
	if v, err := ReadSecret("basic_auth.password_file", f); err != nil || v != "s3cret" {
		t.Errorf("ReadSecret = %q, %v", v, err)
	}
	os.WriteFile(f, []byte("\n"), 0o600)
	if _, err := ReadSecret("basic_auth.password_file", f); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty secret: %v", err)
	}
	if _, err := ReadSecret("bearer_token_file", filepath.Join(dir, "none")); err == nil || !strings.Contains(err.Error(), "bearer_token_file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestTLSConfigErrorsNameFilesNotContent(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"), 0o600)
	if _, err := (TLSConfig{CAFile: bad}).Config(); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("CA without certificates: %v", err)
	}
	_, err := (TLSConfig{CertFile: bad, KeyFile: bad}).Config()
	if err == nil || strings.Contains(err.Error(), "c2VjcmV0") || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad key pair: %v", err)
	}
	tc, err := (TLSConfig{ServerName: "am.example"}).Config()
	if err != nil || tc.ServerName != "am.example" || tc.MinVersion == 0 {
		t.Errorf("plain config: %+v, %v", tc, err)
	}
}
