package daemon

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Prometheus's conventions: a counter's name ends in _total and a gauge's
// does not, and every metric says what it measures.
func TestMetricNamesFollowConventions(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range allMetrics {
		if seen[m.name] {
			t.Errorf("%s defined twice", m.name)
		}
		seen[m.name] = true
		if !strings.HasPrefix(m.name, "quorumproxy_") {
			t.Errorf("%s: not under quorumproxy_", m.name)
		}
		if counter := m.typ == prometheus.CounterValue; counter != strings.HasSuffix(m.name, "_total") {
			t.Errorf("%s: a counter's name ends in _total, and only a counter's", m.name)
		}
		if len(m.help) < 20 || !strings.HasSuffix(m.help, ".") && !strings.HasSuffix(m.help, ")") {
			t.Errorf("%s: HELP %q does not say what it measures", m.name, m.help)
		}
		if strings.Contains(m.name, "bytes") && !strings.HasSuffix(strings.TrimSuffix(m.name, "_total"), "_bytes") {
			t.Errorf("%s: a byte count ends in _bytes (base unit last)", m.name)
		}
	}
}
