package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
)

// runSignEvents is `vigil sign-events`: sign JSONL events with an emitter's
// Ed25519 key (see features.SignEvent), or print the keyring entry of its
// public key.
func runSignEvents(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sign-events", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyPath := fs.String("key", "", "the emitter's private key (PEM PKCS #8 Ed25519, as vigil keygen writes it; required)")
	kid := fs.String("kid", "", "the key's id, written to each event's sig_key (required)")
	input := fs.String("input", "-", "JSONL events to sign: a file, or - for standard input")
	entry := fs.Bool("keyring-entry", false, "print the keyring entry of the key's public key (for detector.signatures.keyring) instead of signing")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: vigil sign-events --key FILE --kid ID [--input FILE] > signed.jsonl
       vigil sign-events --key FILE --kid ID --keyring-entry

Signs each event (one JSON object per line) as an emitter does: the line as
it is, with "sig_key" added, then "sig" (base64 Ed25519 over those bytes)
appended as its last member. vigil verifies exactly those bytes.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *keyPath == "" || *kid == "" || fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	signer, err := detector.LoadSigner(*kid, *keyPath)
	if err != nil {
		return fmt.Errorf("sign-events: %w", err)
	}
	if *entry {
		e := features.SigningKey{KeyID: *kid, Public: signer.Public()}
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
		fmt.Fprintf(stderr, "add it to the keyring file's \"keys\" list; public key (base64) %s\n", base64.StdEncoding.EncodeToString(signer.Public()))
		return nil
	}
	in := stdin
	if *input != "-" {
		f, err := os.Open(*input)
		if err != nil {
			return fmt.Errorf("sign-events: %w", err)
		}
		defer f.Close()
		in = f
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), features.MaxEventSize+1)
	out := bufio.NewWriter(stdout)
	var n, line int64
	for sc.Scan() {
		line++
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if len(sc.Bytes()) == 0 {
			continue
		}
		signed, err := features.SignEvent(sc.Bytes(), *kid, signer.Key())
		if err != nil {
			return fmt.Errorf("sign-events: line %d: %w", line, err)
		}
		out.Write(signed)
		out.WriteByte('\n')
		n++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("sign-events: line %d: %w", line+1, err)
	}
	if err := out.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "signed %d events with key %s\n", n, *kid)
	return nil
}
