package daemon

import (
	"net/http"
	"strings"
	"sync"

	gometrics "github.com/hashicorp/go-metrics"
	promsink "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quorumproxy/quorumproxy/health"
)

// Every metric goes through go-metrics' global instance, the one memberlist
// reports through, so one Prometheus sink carries ours and memberlist's.
var (
	globalOnce sync.Once
	globalReg  *prometheus.Registry
	globalErr  error
)

func metricsRegistry() (*prometheus.Registry, error) {
	globalOnce.Do(func() {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		// Expiration 0: a counter that stops moving must not vanish from /metrics.
		sink, err := promsink.NewPrometheusSinkFrom(promsink.PrometheusOpts{Registerer: reg, Name: "quorumproxy_sink"})
		if err != nil {
			globalErr = err
			return
		}
		conf := gometrics.DefaultConfig("quorumproxy")
		conf.EnableHostname = false
		conf.EnableHostnameLabel = false
		conf.EnableRuntimeMetrics = false // the Go collector above has them
		conf.EnableTypePrefix = false
		if _, err := gometrics.NewGlobal(conf, sink); err != nil {
			globalErr = err
			return
		}
		globalReg = reg
	})
	return globalReg, globalErr
}

// metricsExporter turns the proxy's atomic counters into go-metrics counters
// at scrape time (the data path never touches a metrics library) and counts
// health events as they happen.
type metricsExporter struct {
	reg *prometheus.Registry

	mu         sync.Mutex
	last       map[string]uint64           // metric key + labels -> last exported total
	lastStatus map[[2]string]health.Status // service, backend -> last status seen
}

func newMetricsExporter() (*metricsExporter, error) {
	reg, err := metricsRegistry()
	if err != nil {
		return nil, err
	}
	return &metricsExporter{reg: reg, last: map[string]uint64{}, lastStatus: map[[2]string]health.Status{}}, nil
}

// handler serves /metrics after sync has brought the counters up to date.
func (m *metricsExporter) handler(sync func()) http.Handler {
	inner := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sync()
		inner.ServeHTTP(w, r)
	})
}

// counter exports a cumulative total as a go-metrics counter increment.
func (m *metricsExporter) counter(key []string, labels []gometrics.Label, total uint64) {
	id := metricID(key, labels)
	m.mu.Lock()
	prev, seen := m.last[id]
	m.last[id] = total
	m.mu.Unlock()
	switch {
	case total > prev:
		gometrics.IncrCounterWithLabels(key, float32(total-prev), labels)
	case !seen:
		gometrics.IncrCounterWithLabels(key, 0, labels) // present at zero from the first scrape
	}
}

func (m *metricsExporter) gauge(key []string, labels []gometrics.Label, v float64) {
	gometrics.SetPrecisionGaugeWithLabels(key, v, labels)
}

func metricID(key []string, labels []gometrics.Label) string {
	var b strings.Builder
	b.WriteString(strings.Join(key, "."))
	for _, l := range labels {
		b.WriteString("|" + l.Name + "=" + l.Value)
	}
	return b.String()
}

func serviceLabels(service string) []gometrics.Label {
	return []gometrics.Label{{Name: "service", Value: service}}
}

func backendLabels(service, backend string) []gometrics.Label {
	return []gometrics.Label{{Name: "service", Value: service}, {Name: "backend", Value: backend}}
}

// healthChanged counts a state report from the health monitor.
func (m *metricsExporter) healthChanged(s health.State) {
	labels := backendLabels(s.Service, s.Backend)
	key := [2]string{s.Service, s.Backend}
	m.mu.Lock()
	prev, seen := m.lastStatus[key]
	m.lastStatus[key] = s.Status
	m.mu.Unlock()
	if seen && prev != s.Status {
		gometrics.IncrCounterWithLabels([]string{"health", "transitions"}, 1,
			append(labels, gometrics.Label{Name: "to", Value: s.Status.String()}))
	}
}

func countHook(service, kind string, ok bool) {
	result := "ok"
	if !ok {
		result = "error"
	}
	gometrics.IncrCounterWithLabels([]string{"hooks", "runs"}, 1, []gometrics.Label{
		{Name: "service", Value: service}, {Name: "hook", Value: kind}, {Name: "result", Value: result}})
}
