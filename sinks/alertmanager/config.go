package alertmanager

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sinks/httpauth"
)

// Config configures the Alertmanager sink. Start from DefaultConfig; New
// fills zero durations, AlertName and MaxActive with the defaults.
type Config struct {
	// URLs are the Alertmanagers' base URLs (http or https, optionally with
	// a path prefix: https://am.example/prefix); alerts are posted to
	// URL + "/api/v2/alerts". List every member of an HA cluster: each gets
	// every alert. Credentials do not go in URLs: use BasicAuth or
	// BearerTokenFile. Required.
	URLs []string `yaml:"urls"`
	// Timeout bounds one POST to one Alertmanager. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// BasicAuth sends HTTP basic authentication (optional).
	BasicAuth BasicAuth `yaml:"basic_auth"`
	// BearerTokenFile holds a token sent as "Authorization: Bearer …",
	// re-read for every request so a rotated token is picked up (optional,
	// not with BasicAuth).
	BearerTokenFile string `yaml:"bearer_token_file"`
	// TLS configures https URLs (optional).
	TLS TLSConfig `yaml:"tls"`
	// GeneratorURL is the alerts' link to the analyst view, with
	// placeholders {alert_id}, {agent_id} and {kind} replaced by the
	// (escaped) values of the latest alert, e.g.
	// "https://analyst.example/alerts/{alert_id}". Default empty: no link.
	GeneratorURL string `yaml:"generator_url"`
	// ResendInterval is how often Run re-sends every firing (and recently
	// resolved) alert. Default 1m.
	ResendInterval time.Duration `yaml:"resend_interval"`
	// ResolveAfter is how long an alert stays firing without a new alert of
	// its label set or a normal window of its agent; it is also endsAt -
	// now in every firing send. Default 15m; at least ResendInterval.
	ResolveAfter time.Duration `yaml:"resolve_after"`
	// AlertName is the alertname label. Default "VigilAgentAnomaly".
	AlertName string `yaml:"alert_name"`
	// MaxActive bounds the firing alerts the sink remembers; beyond it the
	// least recently refreshed is resolved. Default 100000.
	MaxActive int `yaml:"max_active"`
}

// BasicAuth and TLSConfig are shared with the other HTTP sinks.
type (
	BasicAuth = httpauth.BasicAuth
	TLSConfig = httpauth.TLSConfig
)

// Defaults.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultResendInterval = time.Minute
	DefaultResolveAfter   = 15 * time.Minute
	DefaultAlertName      = "VigilAgentAnomaly"
	DefaultMaxActive      = 100_000
)

// DefaultConfig returns the defaults (no URLs).
func DefaultConfig() Config {
	return Config{
		Timeout: DefaultTimeout, ResendInterval: DefaultResendInterval, ResolveAfter: DefaultResolveAfter,
		AlertName: DefaultAlertName, MaxActive: DefaultMaxActive,
	}
}

func (c *Config) fillDefaults() {
	d := DefaultConfig()
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.ResendInterval == 0 {
		c.ResendInterval = d.ResendInterval
	}
	if c.ResolveAfter == 0 {
		c.ResolveAfter = d.ResolveAfter
	}
	if c.AlertName == "" {
		c.AlertName = d.AlertName
	}
	if c.MaxActive == 0 {
		c.MaxActive = d.MaxActive
	}
}

func cfgErr(field, format string, args ...any) error {
	return &detector.ConfigError{Field: "alertmanager." + field, Msg: fmt.Sprintf(format, args...)}
}

// Validate reports the first invalid field (after defaults are filled).
func (c Config) Validate() error {
	if len(c.URLs) == 0 {
		return cfgErr("urls", "at least one Alertmanager URL is required")
	}
	seen := map[string]bool{}
	for i, raw := range c.URLs {
		if _, err := endpoint(raw); err != nil {
			return cfgErr(fmt.Sprintf("urls[%d]", i), "%v", err)
		}
		if seen[raw] {
			return cfgErr(fmt.Sprintf("urls[%d]", i), "%s is listed twice", raw)
		}
		seen[raw] = true
	}
	switch {
	case c.Timeout < 0:
		return cfgErr("timeout", "must be > 0")
	case c.ResendInterval < 0:
		return cfgErr("resend_interval", "must be > 0")
	case c.ResolveAfter < c.ResendInterval:
		return cfgErr("resolve_after", "%v: want at least resend_interval (%v), or alerts time out between re-sends", c.ResolveAfter, c.ResendInterval)
	case c.MaxActive < 0:
		return cfgErr("max_active", "must be > 0")
	case (c.BasicAuth.Username == "") != (c.BasicAuth.PasswordFile == ""):
		return cfgErr("basic_auth", "set both username and password_file")
	case c.BasicAuth.Username != "" && c.BearerTokenFile != "":
		return cfgErr("bearer_token_file", "set basic_auth or bearer_token_file, not both")
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return cfgErr("tls", "set both cert_file and key_file")
	}
	if c.GeneratorURL != "" {
		u, err := url.Parse(expandGenerator(c.GeneratorURL, "0123456789abcdef", "spiffe://bank.example/agent/a b", "volume"))
		if err != nil || u.Scheme == "" || u.Host == "" {
			return cfgErr("generator_url", "%q: want an absolute URL such as https://analyst.example/alerts/{alert_id}", c.GeneratorURL)
		}
	}
	return nil
}

// endpoint returns the POST URL of an Alertmanager base URL.
func endpoint(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("not a valid URL") // raw may hold credentials: not repeated
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("%q: want an http:// or https:// URL", raw)
	case u.Host == "":
		return "", fmt.Errorf("%q: no host", raw)
	case u.User != nil:
		return "", fmt.Errorf("the URL of %s has credentials in it, which would be logged: use basic_auth.password_file or bearer_token_file", u.Host)
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("%q: want a base URL without query or fragment", raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v2/alerts"
	u.RawPath = ""
	return u.String(), nil
}

// expandGenerator fills the GeneratorURL placeholders.
func expandGenerator(tmpl, alertID, agentID, kind string) string {
	if !strings.Contains(tmpl, "{") {
		return tmpl
	}
	return strings.NewReplacer("{alert_id}", escape(alertID), "{agent_id}", escape(agentID), "{kind}", escape(kind)).Replace(tmpl)
}

// escape makes s safe in a URL path segment and a query value.
func escape(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }

// newTransport builds the HTTP transport: timeouts and TLS from files.
func newTransport(c Config) (*http.Transport, error) {
	tc, err := c.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("alertmanager: %w", err)
	}
	d := &net.Dialer{Timeout: min(c.Timeout, 5*time.Second), KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   min(c.Timeout, 10*time.Second),
		ResponseHeaderTimeout: c.Timeout,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}, nil
}

// readSecret reads a secret file (see httpauth.ReadSecret).
func readSecret(field, file string) (string, error) {
	v, err := httpauth.ReadSecret(field, file)
	if err != nil {
		return "", fmt.Errorf("alertmanager: %w", err)
	}
	return v, nil
}
