// Command vigil is the streaming behavioural anomaly detector for machine
// identities. See the README for the subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

var version = "dev"

const usage = `vigil — behavioural anomaly detection for machine identities

Usage:
  vigil demo      [--agents N] [--days N] [--speed X] ...     stream a simulated fleet through a dev broker into two vigil instances, live
  vigil run       [--config FILE] [--kafka.brokers H:P,...]  consume the events topic as a consumer group member
  vigil replay    --input FILE|- [--config FILE]              score a JSONL event file, alerts to stdout
  vigil simulate  [--out FILE] [--truth FILE] ...             write a synthetic fleet with labelled incidents
  vigil devbroker [--listen H:P] [--topic NAME:N]...          run an in-memory Kafka-protocol broker (development)
  vigil schema    clickhouse                                  print the ClickHouse DDL (deploy/clickhouse/schema.sql)
  vigil audit     verify|heads [--config FILE] [--head FILE]  check the ClickHouse audit chains (and against published heads)
  vigil keygen    --key FILE --pub FILE                       write an Ed25519 key pair for signing revocation requests
  vigil sign-events --key FILE --kid ID [--input FILE]        sign JSONL events as an emitter does (--keyring-entry: its keyring line)
  vigil verify-revocation --pub KID=FILE [FILE|-]             check the signatures of revocation requests
  vigil version                                               print the version

Run "vigil COMMAND --help" for a command's flags.
`

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "run":
		err = runRun(ctx, args[1:], stdout, stderr)
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "devbroker":
		err = runDevbroker(ctx, args[1:], stdout, stderr)
	case "replay":
		err = runReplay(ctx, args[1:], stdin, stdout, stderr)
	case "simulate":
		err = runSimulate(ctx, args[1:], stdout, stderr)
	case "keygen":
		err = runKeygen(ctx, args[1:], stdout, stderr)
	case "sign-events":
		err = runSignEvents(ctx, args[1:], stdin, stdout, stderr)
	case "verify-revocation":
		err = runVerifyRevocation(ctx, args[1:], stdin, stdout, stderr)
	case "schema":
		err = runSchema(ctx, args[1:], stdout, stderr)
	case "audit":
		err = runAudit(ctx, args[1:], stdin, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "vigil", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "vigil: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if err == errUsage {
			return 2
		}
		var code exitCode
		if errors.As(err, &code) {
			return int(code)
		}
		fmt.Fprintln(stderr, "vigil:", err)
		return 1
	}
	return 0
}
