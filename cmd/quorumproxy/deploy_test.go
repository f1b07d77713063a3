package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	rulesFile     = "../../deploy/prometheus/quorumproxy.rules.yml"
	dashboardFile = "../../deploy/grafana/quorumproxy.json"
)

var metricName = regexp.MustCompile(`quorumproxy_[a-z_]+`)

// deployMetrics are the metric names the alert rules and the dashboard
// use (a histogram's _bucket, _sum and _count name the histogram).
func deployMetrics(t *testing.T) []string {
	t.Helper()
	var text []string
	rules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(rules), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(l), "expr:"); ok {
			text = append(text, e)
		}
	}
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string }
		}
	}
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			text = append(text, tg.Expr)
		}
	}
	var names []string
	for _, e := range text {
		for _, n := range metricName.FindAllString(e, -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				n = strings.TrimSuffix(n, suffix)
			}
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	if len(names) < 10 {
		t.Fatalf("only %d metrics named in the rules and the dashboard: %v", len(names), names)
	}
	return names
}

// The alert rules pass promtool, and the dashboard is valid JSON naming
// metrics (that they exist is checked against a running cluster in
// TestClusterOfThree).
func TestDeployFiles(t *testing.T) {
	deployMetrics(t)
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("QP_REQUIRE_SERVERS") != "" {
			t.Fatal("promtool not installed (Debian's prometheus package; make deps installs it)")
		}
		t.Skip("promtool not installed (Debian's prometheus package; make deps installs it)")
	}
	abs, _ := filepath.Abs(rulesFile)
	if out, err := exec.Command(promtool, "check", "rules", abs).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}
