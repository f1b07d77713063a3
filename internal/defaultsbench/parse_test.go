package defaultsbench

import (
	"strings"
	"testing"

	"github.com/quorumproxy/quorumproxy/internal/drill"
)

// The measurement's own arithmetic, which make test runs (the measurement
// itself does not): metrics read from /metrics text, percentiles over the
// runs that recovered, and the promote hook's time from a log line.
func TestParsing(t *testing.T) {
	m, err := parseMetrics(strings.NewReader(`# HELP quorumproxy_health_checks_total Health checks.
# TYPE quorumproxy_health_checks_total counter
quorumproxy_health_checks_total{backend="db1",service="db"} 120
quorumproxy_health_checks_total{backend="db2",service="db"} 118
quorumproxy_health_check_duration_seconds_bucket{address="127.0.0.1:5432",kind="postgres",le="0.25"} 117
quorumproxy_failovers_total{service="db"} 1
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.sum("quorumproxy_health_checks_total"); got != 238 {
		t.Errorf("all checks: %v, want 238", got)
	}
	if got := m.sum("quorumproxy_health_checks_total", `backend="db1"`); got != 120 {
		t.Errorf("db1's checks: %v, want 120", got)
	}
	if got := m.sum("quorumproxy_health_check_duration_seconds_bucket", `le="0.25"`); got != 117 {
		t.Errorf("bucket: %v", got)
	}
	if got := m.sum("quorumproxy_failovers"); got != 0 {
		t.Errorf("a name is matched whole: %v", got)
	}

	var runs []*drill.Report
	for i := 1; i <= 100; i++ {
		runs = append(runs, &drill.Report{Recovered: true, RTO: float64(i) / 10})
	}
	runs = append(runs, &drill.Report{Recovered: false, RTO: -1})
	if p50, p99 := rtoPercentile(runs, 50), rtoPercentile(runs, 99); p50 != 5 || p99 != 9.9 {
		t.Errorf("p50 %v, p99 %v; want 5, 9.9", p50, p99)
	}
	if got := rtoPercentile(nil, 50); got != -1 {
		t.Errorf("no runs: %v", got)
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median %v", got)
	}

	line := `time=2026-12-06T23:09:03.234Z level=INFO msg="hook ran" service=db hook=promote argv="[/bin/sh -c x]" took=1.037687985s output="promoted"`
	if mm := hookRan.FindStringSubmatch(line); mm == nil || mm[1] != "1.037687985s" {
		t.Errorf("hook line: %q", mm)
	}
	if hookRan.MatchString(strings.Replace(line, "hook=promote", "hook=notify", 1)) {
		t.Error("a notify hook counted as a promote")
	}
}
