package alertmanager

import "github.com/prometheus/client_golang/prometheus"

// metrics are the sink's own: per Alertmanager URL (a bounded, configured
// set) and per resolution reason.
type metrics struct {
	posts    *prometheus.CounterVec
	sent     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	resolved *prometheus.CounterVec
	firing   prometheus.GaugeFunc
}

func newMetrics(urls []string, firing func() float64) metrics {
	m := metrics{
		posts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_alertmanager_posts_total",
			Help: "POSTs of alerts to an Alertmanager, by URL and result (ok; error: no answer, 5xx, 408 or 429; rejected: other 3xx/4xx).",
		}, []string{"url", "result"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_alertmanager_alerts_sent_total",
			Help: "Alerts (firing or resolved, re-sends included) an Alertmanager accepted, by URL.",
		}, []string{"url"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_alertmanager_post_duration_seconds",
			Help:    "Time for one POST to an Alertmanager, by URL.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"url"}),
		resolved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_alertmanager_resolved_total",
			Help: "Alerts resolved, by reason (normal: a normal window of the agent; superseded: a newer alert of the agent and kind with another severity; expired: not refreshed for resolve_after; evicted: max_active firing alerts).",
		}, []string{"reason"}),
		firing: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vigil_alertmanager_firing_alerts",
			Help: "Alerts the sink holds firing (re-sent each resend_interval).",
		}, firing),
	}
	for _, u := range urls {
		for _, r := range []string{"ok", "error", "rejected"} {
			m.posts.WithLabelValues(u, r)
		}
		m.sent.WithLabelValues(u)
	}
	for _, r := range reasons {
		m.resolved.WithLabelValues(r)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.posts, m.sent, m.duration, m.resolved, m.firing}
}

// Describe implements prometheus.Collector: register the Sink with the
// program's registry to export its metrics.
func (s *Sink) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range s.m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (s *Sink) Collect(ch chan<- prometheus.Metric) {
	for _, c := range s.m.collectors() {
		c.Collect(ch)
	}
}
