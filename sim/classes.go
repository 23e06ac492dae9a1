package sim

import "math"

// Time constants in milliseconds: the generator keeps time as float64 milliseconds
// since the Unix epoch.
const (
	msMinute = 60_000.0
	msHour   = 3_600_000.0
	msDay    = 86_400_000.0
)

// schedule names the shape of a class's event rate over the week.
type schedule int

const (
	schedBusiness schedule = iota // Mon–Fri 08–18, silent otherwise
	schedNightly                  // every day 01–04, a trickle otherwise
	schedDiurnal                  // sinusoid peaking at 14:00, weekends lower
	schedFlat                     // 24/7 at a constant rate
	schedKYC                      // Mon–Fri 08–18 plus Saturday mornings
	schedBursty                   // a low base rate plus bursts (see agent.nextBurst)
)

// dcMix holds cumulative probabilities over the data classes public, internal,
// confidential and restricted (in that order).
type dcMix [4]float64

// mix builds a dcMix from four (not necessarily normalised) weights.
func mix(public, internal, confidential, restricted float64) dcMix {
	s := public + internal + confidential + restricted
	return dcMix{public / s, (public + internal) / s, (public + internal + confidential) / s, 1}
}

func dataClassName(i int) string {
	switch i {
	case 0:
		return "public"
	case 1:
		return "internal"
	case 2:
		return "confidential"
	default:
		return "restricted"
	}
}

// opSpec is one kind of call a class makes: a target and an action with its payload,
// latency and data-class profile. A target of the form "@class" means "one agent of
// that class", resolved per calling agent.
type opSpec struct {
	target, action string
	w              float64 // relative frequency within the class
	in, out        float64 // median bytes_in / bytes_out
	sd             float64 // lognormal sigma of the byte counts
	lat            float64 // median latency_ms
	dc             dcMix
	money          bool   // the call moves money: it carries an amount
	res            string // resource prefix; the generator appends a numeric id
}

func o(target, action string, w, in, out, lat float64, dc dcMix) opSpec {
	return opSpec{target: target, action: action, w: w, in: in, out: out, sd: 0.6, lat: lat, dc: dc}
}

func (s opSpec) withMoney() opSpec            { s.money = true; return s }
func (s opSpec) withRes(prefix string) opSpec { s.res = prefix; return s }
func (s opSpec) withSD(sd float64) opSpec     { s.sd = sd; return s }

// authW is one authentication method and its share of a class's calls.
type authW struct {
	auth string
	w    float64
}

// migration is the benign fleet deployment a class can undergo: every agent of the
// class moves from one service to its successor, possibly with renamed actions.
type migration struct {
	from, to string
	actions  map[string]string // old action → new action; absent means unchanged
}

// classSpec is the behaviour profile of one agent class.
type classSpec struct {
	name      string
	share     int // relative share of the fleet
	net       int // second octet of the class's 10.x source subnet
	sched     schedule
	peak      float64 // events/hour of a typical agent at its busiest
	ops       []opSpec
	rare      []opSpec // rare but normal calls, shared by the whole class
	auth      []authW
	attested  float64 // probability a call carries attestation
	deny      float64
	errRate   float64
	timeout   float64
	amountMed float64 // median amount of money calls
	mig       migration
}

// activity returns the class's event rate (events/hour, before per-agent scaling) at
// time ms. Bursts of bursty classes are added by the agent.
func (c *classSpec) activity(ms float64) float64 {
	wd, h := clock(ms)
	weekday := wd >= 1 && wd <= 5
	switch c.sched {
	case schedBusiness:
		if weekday && h >= 8 && h < 18 {
			return c.peak * (0.7 + 0.3*math.Sin(math.Pi*(h-8)/10))
		}
		return 0
	case schedNightly:
		if h >= 1 && h < 4 {
			return c.peak
		}
		return 1
	case schedDiurnal:
		r := c.peak * (0.5 + 0.46*math.Cos(2*math.Pi*(h-14)/24))
		if !weekday {
			r *= 0.4
		}
		return r
	case schedFlat:
		return c.peak
	case schedKYC:
		if weekday && h >= 8 && h < 18 {
			return c.peak
		}
		if wd == 6 && h >= 9 && h < 13 {
			return 0.4 * c.peak
		}
		return 0
	case schedBursty:
		return c.peak
	}
	return 0
}

// active reports whether the class is busy at ms (at least 30% of its peak); idle
// reports whether it is (nearly) silent.
func (c *classSpec) active(ms float64) bool { return c.activity(ms) >= 0.3*c.peak }
func (c *classSpec) idle(ms float64) bool   { return c.activity(ms) <= 0.02*c.peak }

// clock returns the weekday (0 = Sunday) and the hour of day (fractional) in UTC,
// which is the fleet's local time.
func clock(ms float64) (weekday int, hour float64) {
	day := math.Floor(ms / msDay)
	weekday = int(((int64(day)+4)%7 + 7) % 7) // 1970-01-01 was a Thursday
	return weekday, (ms - day*msDay) / msHour
}

// classSpecs returns the fleet's agent classes. It builds a fresh table on every call
// so that no package state is shared between generations.
func classSpecs() []*classSpec {
	pub, intl := mix(8, 2, 0, 0), mix(0.5, 9, 0.5, 0)
	conf, ic := mix(0, 2, 8, 0), mix(0, 6, 4, 0)
	restr := mix(0, 0.5, 3.5, 6)
	return []*classSpec{
		{
			name: "payments-bot", share: 16, net: 12, sched: schedBusiness, peak: 95,
			ops: []opSpec{
				o("payments-gateway", "payments.transfer", 30, 800, 2000, 180, ic).withMoney().withRes("accounts/"),
				o("payments-gateway", "payments.status", 18, 600, 300, 40, intl),
				o("ledger-svc", "ledger.read", 20, 4000, 200, 30, conf).withRes("accounts/"),
				o("ledger-svc", "ledger.post", 10, 300, 1200, 60, ic).withMoney(),
				o("fx-svc", "fx.quote", 8, 500, 200, 25, intl),
				o("sanctions-svc", "sanctions.screen", 8, 700, 900, 120, conf),
				o("accounts-api", "GET /accounts/{id}/balance", 15, 900, 150, 35, conf).withRes("accounts/"),
				o("@fraud-scorer", "fraud.score", 12, 300, 1500, 45, conf),
				o("core-banking", "core.posting", 5, 400, 1100, 90, ic).withMoney(),
			},
			rare: []opSpec{
				o("swift-gateway", "swift.send", 1, 900, 3000, 400, restr).withMoney(),
				o("sepa-gateway", "sepa.instant", 1, 700, 1800, 250, ic).withMoney(),
				o("treasury-svc", "treasury.limits.read", 1, 1500, 200, 60, conf),
				o("notification-svc", "notify.send", 1, 200, 600, 30, intl),
			},
			auth: []authW{{"mtls", 0.97}, {"jwt", 0.03}}, attested: 0.998,
			deny: 0.01, errRate: 0.01, timeout: 0.003, amountMed: 1500,
			mig: migration{from: "ledger-svc", to: "ledger-v2",
				actions: map[string]string{"ledger.read": "ledger.v2.read", "ledger.post": "ledger.v2.post"}},
		},
		{
			name: "batch-reconciler", share: 6, net: 14, sched: schedNightly, peak: 150,
			ops: []opSpec{
				o("ledger-svc", "ledger.export", 25, 2e6, 500, 2000, conf).withSD(0.9),
				o("core-banking", "core.statement.fetch", 20, 8e5, 400, 900, conf).withSD(0.9),
				o("object-store", "s3.put", 20, 300, 1.5e6, 400, conf).withSD(0.9).withRes("recon/"),
				o("object-store", "s3.get", 10, 1e6, 300, 300, conf).withSD(0.9).withRes("recon/"),
				o("recon-db", "sql.query", 25, 2e5, 800, 300, ic).withSD(0.8),
				o("recon-db", "sql.bulk_insert", 10, 400, 8e5, 700, ic).withSD(0.8),
				o("settlement-svc", "settlement.match", 15, 3e4, 2e4, 150, ic),
				o("scheduler-svc", "job.status", 5, 300, 200, 15, intl),
			},
			rare: []opSpec{
				o("swift-gateway", "swift.mt940.fetch", 1, 5e5, 400, 600, restr).withSD(0.9),
				o("tool/email-report", "email.send", 1, 200, 5e4, 200, intl),
				o("archive-svc", "archive.write", 1, 300, 3e6, 900, conf).withSD(0.9),
			},
			auth: []authW{{"mtls", 1}}, attested: 0.999,
			deny: 0.005, errRate: 0.02, timeout: 0.005,
			mig: migration{from: "object-store", to: "object-store-eu2"},
		},
		{
			name: "support-assistant", share: 22, net: 21, sched: schedDiurnal, peak: 120,
			ops: []opSpec{
				o("crm-api", "GET /customers/{id}", 30, 3500, 200, 45, conf).withRes("customers/"),
				o("crm-api", "GET /customers/{id}/transactions", 15, 12000, 250, 80, conf).withRes("customers/"),
				o("crm-api", "PATCH /customers/{id}/contact", 4, 300, 900, 70, conf).withRes("customers/"),
				o("ticket-svc", "tickets.create", 10, 400, 1500, 60, intl),
				o("ticket-svc", "tickets.update", 10, 300, 1000, 50, intl),
				o("tool/kb-search", "kb.search", 15, 6000, 300, 120, pub),
				o("llm-gateway", "llm.complete", 25, 2500, 4000, 900, ic),
				o("@kyc-agent", "kyc.status", 4, 500, 300, 200, conf),
				o("cards-api", "GET /cards/{id}/status", 6, 700, 150, 40, conf).withRes("cards/"),
			},
			rare: []opSpec{
				o("payments-gateway", "payments.status", 1, 600, 300, 40, intl),
				o("tool/translate", "translate.text", 1, 1500, 1500, 300, intl),
				o("document-store", "documents.fetch", 1, 1e5, 300, 150, conf).withRes("docs/"),
				o("dispute-svc", "disputes.open", 1, 500, 2000, 120, conf),
			},
			auth: []authW{{"jwt", 0.8}, {"mtls", 0.2}}, attested: 0.995,
			deny: 0.015, errRate: 0.02, timeout: 0.004,
			mig: migration{from: "llm-gateway", to: "llm-gateway-v2",
				actions: map[string]string{"llm.complete": "llm.chat"}},
		},
		{
			name: "fraud-scorer", share: 14, net: 31, sched: schedFlat, peak: 100,
			ops: []opSpec{
				o("fraud-model-svc", "model.infer", 35, 400, 2500, 35, intl),
				o("feature-store", "features.get", 30, 6000, 300, 12, conf),
				o("txn-stream", "txn.read", 15, 8000, 200, 20, conf),
				o("rules-engine", "rules.eval", 10, 300, 1200, 8, intl),
				o("case-mgmt", "cases.create", 2, 300, 2500, 60, conf),
				o("device-intel", "device.lookup", 6, 1200, 300, 50, conf),
			},
			rare: []opSpec{
				o("sanctions-svc", "sanctions.screen", 1, 700, 900, 120, conf),
				o("@kyc-agent", "kyc.status", 1, 500, 300, 200, conf),
				o("graph-db", "graph.query", 1, 40000, 600, 250, conf),
			},
			auth: []authW{{"mtls", 1}}, attested: 0.999,
			deny: 0.005, errRate: 0.005, timeout: 0.002,
			mig: migration{from: "feature-store", to: "feature-store-v3",
				actions: map[string]string{"features.get": "features.batch_get"}},
		},
		{
			name: "kyc-agent", share: 14, net: 41, sched: schedKYC, peak: 65,
			ops: []opSpec{
				o("idv-vendor", "kyc.verify", 20, 1500, 3e5, 1500, restr).withSD(0.8),
				o("document-store", "documents.fetch", 20, 4e5, 300, 150, restr).withSD(0.8).withRes("docs/"),
				o("sanctions-svc", "sanctions.screen", 10, 700, 900, 120, conf),
				o("sanctions-svc", "pep.check", 8, 700, 800, 110, conf),
				o("ocr-tool", "ocr.extract", 12, 5000, 4e5, 2500, restr).withSD(0.8),
				o("crm-api", "GET /customers/{id}/identity", 15, 5000, 200, 50, restr).withRes("customers/"),
				o("registry-api", "company.lookup", 6, 8000, 300, 300, pub),
				o("llm-gateway", "llm.complete", 6, 2500, 4000, 900, conf),
			},
			rare: []opSpec{
				o("address-verify", "address.check", 1, 800, 400, 200, conf),
				o("credit-bureau", "credit.report", 1, 20000, 500, 800, restr),
				o("@fraud-scorer", "fraud.score", 1, 300, 1500, 45, conf),
			},
			auth: []authW{{"jwt", 0.6}, {"mtls", 0.4}}, attested: 0.997,
			deny: 0.02, errRate: 0.03, timeout: 0.005,
			mig: migration{from: "ocr-tool", to: "ocr-tool-v2",
				actions: map[string]string{"ocr.extract": "ocr.extract_v2"}},
		},
		{
			name: "devops-bot", share: 8, net: 51, sched: schedBursty, peak: 4,
			ops: []opSpec{
				o("k8s-api", "k8s.rollout", 8, 2000, 3000, 400, intl),
				o("k8s-api", "k8s.scale", 6, 800, 600, 200, intl),
				o("k8s-api", "k8s.get_pods", 14, 20000, 300, 80, intl),
				o("k8s-api", "k8s.logs", 10, 60000, 300, 300, intl).withSD(1),
				o("git-server", "git.pull", 8, 3e5, 500, 700, intl).withSD(1),
				o("ci-server", "ci.trigger", 6, 500, 800, 300, intl),
				o("ci-server", "ci.status", 10, 1500, 200, 60, intl),
				o("vault", "vault.read", 5, 900, 300, 20, restr).withRes("secret/deploy/"),
				o("vault", "vault.renew", 3, 300, 300, 15, conf),
				o("prometheus-api", "metrics.query", 12, 25000, 400, 150, intl).withSD(1),
				o("loki-api", "logs.query", 8, 80000, 400, 400, intl).withSD(1),
				o("pagerduty", "incidents.ack", 2, 400, 300, 200, intl),
				o("artifact-registry", "artifacts.pull", 6, 5e6, 300, 2000, intl).withSD(1),
			},
			rare: []opSpec{
				o("dns-svc", "dns.update", 1, 300, 400, 150, intl),
				o("k8s-api", "k8s.exec", 1, 3000, 800, 500, conf),
				o("infra-api", "terraform.plan", 1, 50000, 4000, 8000, intl),
				o("vault", "vault.write", 1, 300, 800, 25, restr),
			},
			auth: []authW{{"jwt", 0.7}, {"mtls", 0.3}}, attested: 0.99,
			deny: 0.02, errRate: 0.03, timeout: 0.006,
			mig: migration{from: "ci-server", to: "ci-server-gha",
				actions: map[string]string{"ci.trigger": "workflow.dispatch", "ci.status": "workflow.status"}},
		},
	}
}

// probeOps are the privileged calls a probing identity tries.
func probeOps() []opSpec {
	restr, conf := mix(0, 0, 4, 6), mix(0, 2, 8, 0)
	return []opSpec{
		o("iam-svc", "iam.role.assume", 1, 300, 500, 40, restr),
		o("iam-svc", "iam.policy.attach", 1, 300, 700, 50, restr),
		o("admin-api", "GET /admin/users", 1, 9000, 200, 60, conf),
		o("admin-api", "GET /admin/config", 1, 4000, 200, 40, restr),
		o("vault", "vault.read", 1, 900, 300, 20, restr).withRes("secret/prod/"),
		o("vault", "vault.list", 1, 2000, 300, 20, restr).withRes("secret/"),
		o("hsm-gateway", "keys.export", 1, 600, 300, 30, restr),
		o("k8s-api", "k8s.secrets.list", 1, 5000, 300, 60, restr),
		o("ledger-svc", "ledger.admin.override", 1, 300, 900, 50, restr),
		o("payments-gateway", "payments.limits.update", 1, 300, 700, 60, restr),
		o("core-banking", "core.user.grant", 1, 300, 600, 70, restr),
	}
}

// exfilOps are the destinations an exfiltrating identity sends data to.
func exfilOps() []opSpec {
	restr := mix(0, 0, 4, 6)
	return []opSpec{
		o("ext/paste-service", "paste.create", 1, 300, 2e5, 300, restr).withSD(1),
		o("tool/http-post", "http.post", 1, 300, 3e5, 400, restr).withSD(1),
		o("object-store-public", "s3.put_public", 1, 300, 1e6, 500, restr).withSD(1),
		o("tool/email-send", "email.send", 1, 200, 4e5, 300, restr).withSD(1),
		o("sftp-partner", "sftp.put", 1, 200, 8e5, 900, restr).withSD(1),
	}
}
