package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/vigil-sec/vigil/sinks/clickhouse"
)

// Exit statuses of `vigil audit verify` when a chain is broken: that of
// the first broken chain, in topic and partition order.
const (
	exitAltered   = 3 // an entry or stored record was changed, or a record added outside the chain
	exitMissing   = 4 // an entry, or a chained record's row, is gone
	exitReordered = 5 // intact entries sit at other positions than they were written at
	exitLink      = 6 // an intact entry does not link to the one before it, which was replaced
	exitHead      = 7 // the chain verifies but lacks a published head: cut off at the end, or rewritten
)

var exitCodes = map[clickhouse.BreakKind]int{
	clickhouse.BreakAltered: exitAltered, clickhouse.BreakMissing: exitMissing, clickhouse.BreakReordered: exitReordered,
	clickhouse.BreakLink: exitLink, clickhouse.BreakHead: exitHead,
}

// exitCode ends vigil with that status; the command has said why.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

const auditUsage = `Usage:
  vigil audit verify [--config FILE] [--clickhouse.addr H:P] [--clickhouse.database D]
                     [--head FILE|- | --head-topic TOPIC [--kafka.brokers H:P,...]]
  vigil audit heads  [--config FILE] [--kafka.brokers H:P,...] [--head-topic TOPIC]

verify recomputes every audit chain (one per events topic partition) in
ClickHouse and prints, per chain, ok or the first entry or record that does
not verify. With --head (a JSONL file of heads, as "vigil audit heads"
writes them) or --head-topic (the heads topic vigil run publishes to), it
also checks that each chain still holds every head published: a chain cut
short or rewritten consistently is caught only that way.
heads prints the heads the heads topic holds, as JSONL.

The connection settings (addresses, database, user, password file or
variable, TLS; Kafka brokers, TLS, SASL) come from the configuration file's
outputs.clickhouse and kafka sections, as for vigil run; secrets never on
the command line.

Exit status of verify: 0 every chain verifies (and holds every head),
1 verification could not run (connection, configuration, unreadable
heads), 2 usage, and for the first broken chain:
  3 altered    an entry or stored alert/request changed, or one added outside the chain
  4 missing    an entry, or a chained alert/request, removed
  5 reordered  intact entries moved to other positions
  6 link       an intact entry's predecessor was replaced (re-hashed)
  7 head       the chain lacks a published head: entries cut off its end, or it was rewritten

`

// runAudit is `vigil audit verify|heads`.
func runAudit(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "verify" && args[0] != "heads") {
		fmt.Fprint(stderr, auditUsage)
		return errUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("audit "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, auditUsage) }
	configPath := fs.String("config", "", "YAML configuration file: outputs.clickhouse and kafka (default: built-in defaults)")
	brokers := fs.String("kafka.brokers", "", "comma-separated bootstrap brokers host:port (overrides kafka.brokers)")
	headTopic := fs.String("head-topic", "", "heads topic to read (heads: default outputs.clickhouse.audit_heads.topic)")
	var chAddr, chDB, headFile *string
	if sub == "verify" {
		chAddr = fs.String("clickhouse.addr", "", "ClickHouse native-protocol host:port (overrides outputs.clickhouse.addr)")
		chDB = fs.String("clickhouse.database", "", "ClickHouse database (overrides outputs.clickhouse.database)")
		headFile = fs.String("head", "", "JSONL file of published heads to check the chains against (- for stdin)")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vigil audit %s: unexpected argument %q\n", sub, fs.Arg(0))
		return errUsage
	}
	if sub == "verify" && *headFile != "" && *headTopic != "" {
		fmt.Fprintln(stderr, "vigil audit verify: give --head or --head-topic, not both")
		return errUsage
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	kc := cfg.Kafka
	if *brokers != "" {
		kc.Brokers = strings.Split(*brokers, ",")
	}
	readTopic := func(topic string) ([]clickhouse.Head, error) {
		if err := kc.Validate(); err != nil {
			return nil, err
		}
		return readHeadsTopic(ctx, kc, topic)
	}

	if sub == "heads" {
		topic := cmp.Or(*headTopic, cfg.Outputs.ClickHouse.AuditHeads.Topic)
		heads, err := readTopic(topic)
		if err != nil {
			return err
		}
		return writeHeads(stdout, heads)
	}

	var heads []clickhouse.Head
	switch {
	case *headFile != "":
		if heads, err = readHeadsFile(*headFile, stdin); err != nil {
			return err
		}
	case *headTopic != "":
		if heads, err = readTopic(*headTopic); err != nil {
			return err
		}
	}
	cc := cfg.Outputs.ClickHouse.Config
	if *chAddr != "" {
		cc.Addr = []string{*chAddr}
	}
	if *chDB != "" {
		cc.Database = *chDB
	}
	if err := cc.Validate(); err != nil {
		return fmt.Errorf("outputs: %w", err)
	}
	s, err := clickhouse.Open(ctx, cc, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	code, err := verifyChains(ctx, s, heads, stdout)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

// readHeadsFile reads a JSONL file of heads ("-": r).
func readHeadsFile(path string, r io.Reader) ([]clickhouse.Head, error) {
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("--head: %w", err)
		}
		defer f.Close()
		r = f
	}
	var heads []clickhouse.Head
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		h, err := parseHead([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("--head %s line %d: %w", path, n, err)
		}
		heads = append(heads, h)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--head %s: %w", path, err)
	}
	return heads, nil
}

// verifyChains verifies every chain in s and those heads name, then checks
// each intact chain against its heads (highest sequence first), printing a
// line per chain and a summary. It returns the exit status of the first
// broken chain (0: none), or the error that stopped it.
func verifyChains(ctx context.Context, s *clickhouse.Sink, heads []clickhouse.Head, w io.Writer) (int, error) {
	chains, err := s.Chains(ctx)
	if err != nil {
		return 0, err
	}
	byChain := make(map[string][]clickhouse.Head)
	for _, h := range heads {
		if byChain[h.Key()] == nil && !slices.ContainsFunc(chains, func(c clickhouse.Head) bool { return c.Key() == h.Key() }) {
			chains = append(chains, clickhouse.Head{Topic: h.Topic, Partition: h.Partition}) // a chain gone altogether
		}
		if !slices.Contains(byChain[h.Key()], h) {
			byChain[h.Key()] = append(byChain[h.Key()], h)
		}
	}
	slices.SortFunc(chains, func(a, b clickhouse.Head) int {
		return cmp.Or(strings.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
	})
	code, broken, checked := 0, 0, 0
	for _, c := range chains {
		n, err := s.VerifyChain(ctx, c.Topic, c.Partition)
		hs := byChain[c.Key()]
		slices.SortFunc(hs, func(a, b clickhouse.Head) int { return cmp.Compare(b.Seq, a.Seq) })
		for i := 0; err == nil && i < len(hs); i++ {
			err = s.CheckHead(ctx, hs[i])
			checked++
		}
		var ce *clickhouse.ChainError
		switch {
		case errors.As(err, &ce):
			broken++
			if code == 0 {
				code = exitCodes[ce.Kind]
			}
			at := ""
			if ce.Seq > 0 {
				at = fmt.Sprintf(" at entry %d", ce.Seq)
			}
			if ce.RecordID != "" {
				at += fmt.Sprintf(" (%s %s)", ce.RecordType, ce.RecordID)
			}
			fmt.Fprintf(w, "%s: BROKEN %s%s: %s\n", c.Key(), ce.Kind, at, ce.Msg)
		case err != nil:
			return 0, err
		default:
			fmt.Fprintf(w, "%s: ok, %d entries", c.Key(), n)
			if len(hs) > 0 {
				fmt.Fprintf(w, ", holds %d published heads (latest %d)", len(hs), hs[0].Seq)
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, "audit verify: %d chains, %d broken; %d heads checked\n", len(chains), broken, checked)
	return code, nil
}
