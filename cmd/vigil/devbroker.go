package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kfake"
)

// defaultDevTopics are the topics vigil uses, with development partition
// counts.
var defaultDevTopics = []string{"agent-events:6", "agent-events-dlq:1", "agent-revocations:6", "vigil-state:6"}

// topicsFlag collects repeated --topic NAME:PARTITIONS.
type topicsFlag []string

func (t *topicsFlag) String() string     { return strings.Join(*t, ",") }
func (t *topicsFlag) Set(v string) error { *t = append(*t, v); return nil }

// runDevbroker is `vigil devbroker`: an in-process Kafka-protocol broker
// (franz-go's kfake) for development and demos, until ctx ends. It keeps
// everything in memory.
func runDevbroker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devbroker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9092", "address to listen on (port 0: any free port)")
	var topics topicsFlag
	fs.Var(&topics, "topic", "topic to create, NAME:PARTITIONS; repeat for more (default "+strings.Join(defaultDevTopics, ", ")+")")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil devbroker [flags]\n\nRuns a single in-memory Kafka-protocol broker (franz-go's kfake) for development,\ndemos and tests, until SIGINT or SIGTERM. Not for production: nothing is persisted.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vigil devbroker: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	if len(topics) == 0 {
		topics = defaultDevTopics
	}
	c, err := startDevBroker(*listen, topics)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stdout, "devbroker: listening on %s (topics %s); stop with Ctrl-C\n", c.ListenAddrs()[0], strings.Join(topics, ", "))
	<-ctx.Done()
	fmt.Fprintln(stdout, "devbroker: stopped")
	return nil
}

// startDevBroker starts a one-broker in-memory Kafka-protocol cluster
// (kfake) listening on listen ("127.0.0.1:0": any free loopback port) with
// topics, each NAME:PARTITIONS. The caller closes it.
func startDevBroker(listen string, topics []string) (*kfake.Cluster, error) {
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		// kfake asks for 127.0.0.1 and a random port; listen where we were told.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, listen) }),
	}
	seen := make(map[string]bool)
	for _, t := range topics {
		name, parts, err := parseTopic(t)
		if err != nil {
			return nil, fmt.Errorf("--topic %q: %w", t, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("--topic %q: topic %s given twice", t, name)
		}
		seen[name] = true
		opts = append(opts, kfake.SeedTopics(parts, name))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("devbroker: %w", err)
	}
	return c, nil
}

// parseTopic parses NAME:PARTITIONS.
func parseTopic(s string) (string, int32, error) {
	name, p, ok := strings.Cut(s, ":")
	if !ok {
		return "", 0, fmt.Errorf("want NAME:PARTITIONS")
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 10000 {
		return "", 0, fmt.Errorf("partitions must be a number from 1 to 10000")
	}
	if name == "" || strings.ContainsFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) {
		return "", 0, fmt.Errorf("topic names use letters, digits, '.', '_' and '-'")
	}
	return name, int32(n), nil
}
