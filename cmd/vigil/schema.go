package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/vigil-sec/vigil/sinks/clickhouse"
)

// runSchema is `vigil schema clickhouse`: print the DDL of vigil's
// ClickHouse tables (deploy/clickhouse/schema.sql is the same text). vigil
// run applies it itself at start; this is for review, and for creating the
// tables ahead of time with clickhouse-client --multiquery.
func runSchema(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("schema", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil schema clickhouse\n\nPrints the DDL of vigil's ClickHouse tables, in the order vigil applies it.\nApply it with: vigil schema clickhouse | clickhouse-client --multiquery\n")
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() != 1 || fs.Arg(0) != "clickhouse" {
		fs.Usage()
		return errUsage
	}
	_, err := io.WriteString(stdout, clickhouse.Schema())
	return err
}
