package main

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vigil-sec/vigil/detector"
)

// runKeygen is `vigil keygen`: write a new Ed25519 key pair for signing
// revocation requests (private key PKCS #8 PEM, mode 0600; public key PKIX PEM).
func runKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyPath := fs.String("key", "", "file for the private key (PEM, created with mode 0600; must not exist)")
	pubPath := fs.String("pub", "", "file for the public key (PEM), for the policy engine and verify-revocation")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil keygen --key FILE --pub FILE\n\nWrites a new Ed25519 key pair for signing revocation requests.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *keyPath == "" || *pubPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	pder, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}), 0o644); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintf(stdout, "private key %s, public key %s\n", *keyPath, *pubPath)
	return nil
}

// runVerifyRevocation is `vigil verify-revocation`: check the signature of
// revocation requests (one JSON object per line, from files or stdin).
func runVerifyRevocation(_ context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify-revocation", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var pubs []string
	fs.Func("pub", "KID=FILE: a public key (PEM) and the key id it signs as; repeat for several keys", func(s string) error {
		if !strings.Contains(s, "=") {
			return errors.New("want KID=FILE")
		}
		pubs = append(pubs, s)
		return nil
	})
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil verify-revocation --pub KID=FILE [--pub ...] [FILE|-]\n\nChecks the Ed25519 signature of revocation requests, one JSON object per line\n(a Kafka message value or a webhook body). Prints one line per request;\nexits 1 if any fails.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if len(pubs) == 0 || fs.NArg() > 1 {
		fs.Usage()
		return errUsage
	}
	keys := make(map[string]ed25519.PublicKey)
	for _, p := range pubs {
		kid, file, _ := strings.Cut(p, "=")
		k, err := detector.LoadPublicKey(file)
		if err != nil {
			return err
		}
		keys[kid] = k
	}
	in := stdin
	if name := fs.Arg(0); name != "" && name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	b, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var n, bad int
	for i, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		n++
		rv, err := detector.VerifyRevocation([]byte(line), keys)
		if err != nil {
			bad++
			fmt.Fprintf(stdout, "line %d: FAIL: %v\n", i+1, err)
			continue
		}
		fmt.Fprintf(stdout, "line %d: ok: request %s %s %s agent %s credential %s (kid %s)\n", i+1, rv.RequestID, rv.Action, rv.Mode, rv.AgentID, rv.CredentialID, rv.KeyID)
	}
	switch {
	case n == 0:
		return errors.New("verify-revocation: no requests in the input")
	case bad > 0:
		return fmt.Errorf("verify-revocation: %d of %d requests failed", bad, n)
	}
	return nil
}
