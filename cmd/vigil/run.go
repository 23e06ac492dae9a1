package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigil-sec/vigil/detector"
)

// runRun is `vigil run`: consume the events topic as a member of the
// consumer group until ctx ends (SIGINT/SIGTERM), then commit and exit.
func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (default: built-in defaults)")
	brokers := fs.String("kafka.brokers", "", "comma-separated bootstrap brokers host:port (overrides kafka.brokers; default 127.0.0.1:9092)")
	topic := fs.String("kafka.topic", "", "events topic (overrides kafka.topic; default agent-events)")
	group := fs.String("kafka.group", "", "consumer group (overrides kafka.group; default vigil)")
	repartition := fs.Bool("kafka.repartition", false, "re-key the events by agent_id through kafka.repartition_topic before scoring, for producers that do not key by agent_id (sets kafka.repartition)")
	listen := fs.String("web.listen-address", "127.0.0.1:9464", "address for /-/healthy, /-/ready and /metrics")
	webConfig := fs.String("web.config.file", "", "web configuration file for TLS, client certificates and basic auth on /metrics and the health endpoints (the Prometheus exporter toolkit's format; default: plain HTTP, no auth)")
	logLevel := fs.String("log.level", "info", "log level: debug, info, warn or error")
	var amURLs []string
	fs.Func("alertmanager.url", "Alertmanager base URL to send alerts to; repeat for an HA pair (overrides outputs.alertmanager.urls)", func(s string) error {
		amURLs = append(amURLs, s)
		return nil
	})
	chAddr := fs.String("clickhouse.addr", "", "ClickHouse native-protocol host:port; enables the ClickHouse output (overrides outputs.clickhouse.addr)")
	webhookURL := fs.String("webhook.url", "", "URL to POST signed revocation requests to (overrides outputs.webhook.url)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil run [flags]\n\nJoins the Kafka consumer group and scores the events topic: alerts (contract v1)\nas JSONL on stdout, rejected events (dead letters) with their reason on stderr.\nStops on SIGINT or SIGTERM after writing and committing what it has read.\nSASL passwords come from a file or an environment variable named in the\nconfiguration, never from flags.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vigil run: unexpected argument %q\n", fs.Arg(0))
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
	if *topic != "" {
		kc.Topic = *topic
	}
	if *group != "" {
		kc.Group = *group
	}
	kc.Repartition = kc.Repartition || *repartition
	if err := kc.Validate(); err != nil {
		return err
	}
	cfg.Kafka = kc
	if len(amURLs) > 0 {
		cfg.Outputs.Alertmanager.URLs = amURLs
	}
	if *chAddr != "" {
		cfg.Outputs.ClickHouse.Enabled, cfg.Outputs.ClickHouse.Addr = true, []string{*chAddr}
	}
	if *webhookURL != "" {
		cfg.Outputs.Webhook.URL = *webhookURL
	}
	if err := cfg.Outputs.Validate(); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log.level: %w", err)
	}

	// The logger and the dead-letter lines share stderr; whole lines only.
	errw := &lockedWriter{w: stderr}
	log := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: lvl}))
	webTLS := false
	if *webConfig != "" {
		if webTLS, err = checkWebConfig(*webConfig); err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--web.listen-address: %w", err)
	}
	defer ln.Close()
	outs, err := buildOutputs(ctx, cfg, stdout, errw, reg, log)
	if err != nil {
		return err
	}
	defer outs.Close()
	sink, err := detector.NewFanout(reg, log, kc.RetryBackoff, kc.MaxRetryBackoff, outs.sinks...)
	if err != nil {
		return err
	}
	// With repartitioning, the detector consumes the internal topic.
	dkc, rp := kc, (*detector.Repartitioner)(nil)
	if kc.Repartition {
		if rp, err = detector.NewRepartitioner(kc, reg, log); err != nil {
			return err
		}
		dkc = kc.RepartitionedConfig()
	}
	rt, err := detector.NewRuntime(dkc, cfg.Detector, sink, reg, log)
	if err != nil {
		return err
	}
	rt.SetSigner(outs.signer)

	mux := http.NewServeMux()
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "vigil is healthy.")
	})
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !rt.Ready() || rp != nil && !rp.Ready() {
			http.Error(w, "vigil has not joined its consumer group yet.", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "vigil is ready.")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		// Refused handshakes and the like: the peer's address and why.
		ErrorLog: slog.NewLogLogger(log.With("component", "web").Handler(), slog.LevelWarn)}

	// Two actors: the web server and the runtime. Either ending stops the
	// other.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srvDone := make(chan error, 1)
	go func() {
		err := serveWeb(ln, srv, *webConfig, log)
		if !errors.Is(err, http.ErrServerClosed) {
			cancel()
		}
		srvDone <- err
	}()
	scheme := "http://"
	if webTLS {
		scheme = "https://"
	}
	log.Info("vigil run", "version", version, "web", scheme+ln.Addr().String(), "brokers", kc.Brokers, "topic", kc.Topic, "group", kc.Group)
	warnUnverifiedEnforce(log, cfg.Detector)

	// The sinks' background loops (Alertmanager re-sends) outlive the
	// runtime, which writes its last outputs as it stops.
	sinkCtx, stopSinks := context.WithCancel(context.Background())
	waitSinks := outs.start(sinkCtx, log)
	rpDone := make(chan error, 1)
	if rp != nil {
		go func() {
			err := rp.Run(ctx)
			cancel()
			rpDone <- err
		}()
		select {
		case <-rp.Prepared(): // so that the runtime finds the internal topic
		case <-ctx.Done():
		}
	} else {
		rpDone <- nil
	}
	runErr := rt.Run(ctx)
	cancel()
	rpErr := <-rpDone
	stopSinks()
	waitSinks()

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("web server shutdown", "err", err)
	}
	srvErr := <-srvDone
	if runErr != nil {
		return fmt.Errorf("run: %w", runErr)
	}
	if rpErr != nil {
		return fmt.Errorf("run: repartition: %w", rpErr)
	}
	if !errors.Is(srvErr, http.ErrServerClosed) {
		return fmt.Errorf("run: web server: %w", srvErr)
	}
	log.Info("stopped: output written and offsets committed")
	return nil
}

// warnUnverifiedEnforce says at start-up that an enforce revocation policy
// runs as dry run. Enforcement rests only on verified events
// (detector.Alert.Verified), and vigil does not verify event signatures
// yet: anyone who can write to the events topic could forge the alerts.
// Once verification is configurable, this warning depends on it.
func warnUnverifiedEnforce(log *slog.Logger, det detector.Config) {
	pol := det.Revocation
	if !pol.Enabled || pol.Mode != detector.ModeEnforce {
		return
	}
	switch det.Signatures.Mode {
	case detector.SigRequire:
		log.Info("detector.revocation.mode is enforce: every event must carry a verified signature (detector.signatures.mode require), so alerts can enforce")
	case detector.SigVerifyIfPresent:
		log.Warn("detector.revocation.mode is enforce with detector.signatures.mode verify_if_present: only alerts whose windows hold nothing but verified events enforce; the others are sent as dry run, why unverified",
			"field", "detector.signatures.mode", "why", detector.WhyUnverified)
	default:
		log.Warn("detector.revocation.mode is enforce, but events are unverified (detector.signatures.mode is off): enforce runs as dry run, every revocation request is sent with mode dry_run and why unverified",
			"field", "detector.revocation.mode", "why", detector.WhyUnverified)
	}
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
