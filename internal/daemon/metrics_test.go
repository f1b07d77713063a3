package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// A failover is timed from the routed backend's down report to the move;
// a planned move (the old one up) and a flap are not.
func TestFailoverClock(t *testing.T) {
	f := newFailoverClock()
	t0 := time.Unix(1000, 0)
	// The histogram is the process's: other tests observe into it too, so
	// a service name of its own and deltas.
	read := func() (uint64, float64) {
		m := &dto.Metric{}
		if err := failoverDuration.WithLabelValues("fc-svc").(prometheus.Metric).Write(m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
	}
	n0, s0 := read()
	f.routedTo("fc-svc", "a", t0)
	f.health("fc-svc", "b", false, t0) // not the routed one
	f.routedTo("fc-svc", "b", t0.Add(time.Second))
	if n, _ := read(); n != n0 {
		t.Fatalf("a planned move was timed")
	}
	f.health("fc-svc", "b", false, t0.Add(2*time.Second))
	f.health("fc-svc", "b", true, t0.Add(3*time.Second)) // a flap: back before any move
	f.health("fc-svc", "b", false, t0.Add(4*time.Second))
	f.routedTo("fc-svc", "", t0.Add(5*time.Second))
	f.routedTo("fc-svc", "a", t0.Add(6500*time.Millisecond))
	if n, sum := read(); n != n0+1 || sum-s0 != 2.5 {
		t.Errorf("failover timed %d times, %v s in all; want once, 2.5 s (down at 4 s, moved at 6.5 s)", n-n0, sum-s0)
	}
}
