package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
)

// The topics vigil uses, as named by the default configuration.
const (
	devEventsTopic      = "agent-events"
	devStateTopic       = "vigil-state"
	devRevocationsTopic = "agent-revocations"
	devDeadLettersTopic = "agent-events-dlq"
	devEventsPartitions = 6
)

// defaultDevTopics are the topics vigil uses, with development partition
// counts. The state topic is created compacted.
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
	fs.Var(&topics, "topic", "topic to create, NAME:PARTITIONS; repeat for more. vigil's topics are always created: those not named here get "+
		"the defaults ("+strings.Join(defaultDevTopics, ", ")+"; the state topic with the events topic's partitions)")
	events := fs.String("events-topic", devEventsTopic, "the events topic (kafka.topic)")
	state := fs.String("state-topic", devStateTopic, "the state topic (kafka.state_topic), created compacted (cleanup.policy=compact)")
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
	ts, err := devTopics(topics, *events, *state)
	if err != nil {
		return err
	}
	c, err := startDevBrokerTopics(*listen, ts)
	if err != nil {
		return err
	}
	defer c.Close()
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.String()
	}
	fmt.Fprintf(stdout, "devbroker: listening on %s (topics %s); stop with Ctrl-C\n", c.ListenAddrs()[0], strings.Join(names, ", "))
	<-ctx.Done()
	fmt.Fprintln(stdout, "devbroker: stopped")
	return nil
}

// startDevBroker starts a one-broker in-memory Kafka-protocol cluster
// (kfake) listening on listen ("127.0.0.1:0": any free loopback port) with
// topics, each NAME:PARTITIONS, and vigil's topics that topics does not
// name (see devTopics; the events and state topics are agent-events and
// vigil-state). The caller closes it.
func startDevBroker(listen string, topics []string) (*kfake.Cluster, error) {
	ts, err := devTopics(topics, devEventsTopic, devStateTopic)
	if err != nil {
		return nil, err
	}
	return startDevBrokerTopics(listen, ts)
}

// devTopic is a topic for the dev broker.
type devTopic struct {
	name    string
	parts   int32
	compact bool // cleanup.policy=compact
}

func (t devTopic) String() string {
	s := t.name + ":" + strconv.Itoa(int(t.parts))
	if t.compact {
		s += " [compacted]"
	}
	return s
}

// devTopics returns the topics named (NAME:PARTITIONS) followed by those of
// vigil's topics they do not name: the events topic (6 partitions), the
// state topic (as many partitions as the events topic), agent-revocations
// (likewise) and agent-events-dlq (1). The state topic is compacted, named
// or not, as vigil run would create it: a named state topic keeps its
// partition count, even one that differs from the events topic's (vigil
// run then says what is wrong).
func devTopics(named []string, events, state string) ([]devTopic, error) {
	for _, n := range []struct{ flag, name string }{{"--events-topic", events}, {"--state-topic", state}} {
		if _, _, err := parseTopic(n.name + ":1"); err != nil {
			return nil, fmt.Errorf("%s %q: %w", n.flag, n.name, err)
		}
	}
	if events == state {
		return nil, fmt.Errorf("--state-topic %q: the state topic must not be the events topic", state)
	}
	var ts []devTopic
	index := make(map[string]int)
	for _, s := range named {
		name, parts, err := parseTopic(s)
		if err != nil {
			return nil, fmt.Errorf("--topic %q: %w", s, err)
		}
		if _, ok := index[name]; ok {
			return nil, fmt.Errorf("--topic %q: topic %s given twice", s, name)
		}
		index[name] = len(ts)
		ts = append(ts, devTopic{name: name, parts: parts, compact: name == state})
	}
	add := func(name string, parts int32, compact bool) {
		if _, ok := index[name]; !ok {
			index[name] = len(ts)
			ts = append(ts, devTopic{name: name, parts: parts, compact: compact})
		}
	}
	add(events, devEventsPartitions, false)
	eventParts := ts[index[events]].parts
	add(state, eventParts, true)
	add(devRevocationsTopic, eventParts, false)
	add(devDeadLettersTopic, 1, false)
	return ts, nil
}

// startDevBrokerTopics starts the dev broker with ts. kfake seeds topics
// without configs (SeedTopics), so compacted topics are created after the
// cluster starts, with Cluster.CreateTopic and cleanup.policy=compact:
// DescribeConfigs then reports it, and kfake compacts them.
func startDevBrokerTopics(listen string, ts []devTopic) (*kfake.Cluster, error) {
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		// kfake asks for 127.0.0.1 and a random port; listen where we were told.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, listen) }),
	}
	for _, t := range ts {
		if !t.compact {
			opts = append(opts, kfake.SeedTopics(t.parts, t.name))
		}
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("devbroker: %w", err)
	}
	for _, t := range ts {
		if !t.compact {
			continue
		}
		// A vigil run that found the port first may have created it, also
		// compacted.
		if err := c.CreateTopic(t.name, t.parts, map[string]string{"cleanup.policy": "compact"}); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			c.Close()
			return nil, fmt.Errorf("devbroker: create %s: %w", t.name, err)
		}
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
