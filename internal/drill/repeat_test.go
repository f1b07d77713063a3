package drill

import (
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

func TestDrillSummarize(t *testing.T) {
	runs := []*Report{
		{Recovered: true, RTO: 0.3, Acked: 100, Lost: 1, RPOSeconds: 0.01},
		{Recovered: true, RTO: 0.1, Acked: 200},
		{Recovered: false, RTO: -1, Acked: 50, Failed: 7},
		{Recovered: true, RTO: 0.2, Acked: 10, Lost: 2, RPOSeconds: 0.05},
	}
	a := Summarize(runs)
	if a.Runs != 4 || a.Recovered != 3 || a.Acked != 360 || a.Failed != 7 || a.Lost != 3 || a.RPOMax != 0.05 {
		t.Errorf("sums: %+v", a)
	}
	// nearest rank over 0.1, 0.2, 0.3: p50 the 2nd, p90 the 3rd
	if a.RTOP50 != 0.2 || a.RTOP90 != 0.3 || a.RTOMax != 0.3 {
		t.Errorf("percentiles: %+v", a)
	}
	if a := Summarize([]*Report{{RTO: -1}}); a.RTOP50 != -1 || a.RTOMax != -1 {
		t.Errorf("none recovered: %+v", a)
	}
	ten := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if p50, p90 := Percentile(ten, 50), Percentile(ten, 90); p50 != 5 || p90 != 9 {
		t.Errorf("p50 %v p90 %v of 1..10", p50, p90)
	}
}

func status(target string, bs ...adminapi.Backend) *adminapi.Status {
	return &adminapi.Status{Services: []adminapi.Service{{Name: "db", Role: "primary", Target: target, Backends: bs}}}
}

func TestDrillSwitchTargetAlternates(t *testing.T) {
	up := func(name string, prio int, role string) adminapi.Backend {
		return adminapi.Backend{Name: name, Priority: prio, Health: "up", Role: role}
	}
	// two backends: back and forth
	primary := map[string]int{}
	for i, c := range []struct{ target, want string }{{"a", "b"}, {"b", "a"}, {"a", "b"}} {
		primary[c.target] = i + 1
		st := status(c.target, up("a", 10, ""), up("b", 5, ""))
		got, err := switchTarget(st, "db", "", "", true, primary)
		if err != nil || got != c.want {
			t.Fatalf("run %d from %s: %q %v, want %s", i+1, c.target, got, err, c.want)
		}
	}
	// three: round all of them, the one primary least recently first,
	// by priority among equals
	primary = map[string]int{}
	for i, c := range []struct{ target, want string }{{"a", "c"}, {"c", "b"}, {"b", "a"}, {"a", "c"}} {
		primary[c.target] = i + 1
		st := status(c.target, up("a", 10, ""), up("b", 5, ""), up("c", 7, ""))
		if got, err := switchTarget(st, "db", "", "", true, primary); err != nil || got != c.want {
			t.Errorf("run %d of three from %s: %q %v, want %s", i+1, c.target, got, err, c.want)
		}
	}
	// a down or draining backend is no candidate
	st := status("a", up("a", 10, ""), adminapi.Backend{Name: "b", Health: "down"}, adminapi.Backend{Name: "c", Health: "up", Draining: true})
	if got, err := switchTarget(st, "db", "", "", true, nil); err == nil {
		t.Errorf("no candidate: got %q", got)
	}
	// fixed: to it, then back to where the series began
	st = status("a", up("a", 10, ""), up("b", 5, ""))
	if got, _ := switchTarget(st, "db", "b", "a", false, nil); got != "b" {
		t.Errorf("fixed from a: %q", got)
	}
	st = status("b", up("a", 10, ""), up("b", 5, ""))
	if got, _ := switchTarget(st, "db", "b", "a", false, nil); got != "a" {
		t.Errorf("fixed from b: %q, want back to a", got)
	}
}

func TestDrillSettled(t *testing.T) {
	b := func(name, health, role string) adminapi.Backend {
		return adminapi.Backend{Name: name, Health: health, Role: role}
	}
	for _, c := range []struct {
		st   *adminapi.Status
		ok   bool
		why  string
		name string
	}{
		{status("a", b("a", "up", "primary"), b("b", "up", "replica")), true, "", "settled"},
		{status("", b("a", "down", ""), b("b", "up", "replica")), false, "no target", "no target"},
		{status("b", b("a", "down", ""), b("b", "up", "primary")), false, `backend "a" is down`, "a backend down"},
		{status("b", b("a", "up", "primary"), b("b", "up", "primary")), false, "report primary", "two primaries"},
		{status("b", b("a", "up", "replica"), b("b", "up", "replica")), false, "report primary", "awaiting promotion"},
	} {
		ok, why := Settled(c.st, "db")
		if ok != c.ok || !strings.Contains(why, c.why) {
			t.Errorf("%s: %v %q", c.name, ok, why)
		}
	}
	st := status("a", b("a", "up", "primary"), b("b", "up", "replica"))
	st.Cluster = &adminapi.ClusterStatus{Services: []adminapi.ClusterService{{Service: "db", Primary: "a", Routing: "a", LeaseMS: 500,
		Operation: &adminapi.Operation{ID: 3, Kind: "switchover", Backend: "a", State: "committed"}}}}
	if ok, why := Settled(st, "db"); ok || !strings.Contains(why, "committed") {
		t.Errorf("operation in flight: %v %q", ok, why)
	}
	st.Cluster.Services[0].Operation.State = "done"
	if ok, why := Settled(st, "db"); !ok {
		t.Errorf("cluster settled: %q", why)
	}
}

func TestDrillMarkdown(t *testing.T) {
	t0 := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	s := &Series{Service: "db", Kind: "redis", Listen: "127.0.0.1:7000", Failure: "/bin/kill -KILL 1234", Started: t0, Finished: t0.Add(time.Minute),
		Version: "0.9.0+abc", Host: "db-proxy-1", ServerVersions: map[string]string{"a": "Redis 7.0.15"},
		Config: &ConfigSummary{Service: "db", Listen: "127.0.0.1:7000", Role: "primary", Check: "redis", Interval: "200ms", Timeout: "150ms", Rise: 1, Fall: 2,
			SwitchHold: "3s", Failback: "manual", Backends: []BackendSummary{{"a", "10.0.0.1:6379", 10}, {"b", "10.0.0.2:6379", 5}},
			Cluster: &ClusterSummary{Node: "qp1", Size: 3, Quorum: 2, LeaseTimeout: "3s"}},
		Runs: []*Report{
			{Index: 1, Started: t0.Add(time.Second), Failure: "/bin/kill -KILL 1234", OldTarget: "a", NewTarget: "b", DownAt: 0.4, DecidedAt: 0.5, RoutedAt: 0.6, Recovered: true, RTO: 0.7, Window: 0.65, Acked: 100},
			{Index: 2, Started: t0.Add(9 * time.Second), Failure: "/bin/kill -KILL 1234", OldTarget: "b", NewTarget: "a", DownAt: 0.4, DecidedAt: -1, RoutedAt: 0.6, Recovered: true, RTO: 0.9, Window: 0.8, Acked: 90, Lost: 2, LostIDs: []int64{88, 89}, RPOSeconds: 0.02},
		}}
	s.Aggregate = Summarize(s.Runs)
	var b strings.Builder
	s.Markdown(&b)
	md := b.String()
	for _, want := range []string{
		"# Failover drill: service `db`, 2025-03-04 05:06 UTC",
		"| Date (UTC) | 2025-03-04T05:06:07Z to 2025-03-04T05:07:07Z |",
		"| quorumproxy | 0.9.0+abc |", "| Host | db-proxy-1 |",
		"| Failure | fail command `/bin/kill -KILL 1234` |",
		"| RTO | p50 0.700s, p90 0.900s, max 0.900s |",
		"| RPO | 2 of 190 acknowledged writes LOST",
		"## Configuration", "interval 200ms, timeout 150ms, rise 1, fall 2", "Cluster: 3 proxies (quorum 2)", "lease_timeout 3s",
		"| a | 10.0.0.1:6379 | 10 | Redis 7.0.15 |", "| b | 10.0.0.2:6379 | 5 | - |",
		"## Runs", "| 2 | 05:06:16.000 | /bin/kill -KILL 1234 | b | a | +0.400s | - | +0.600s | 0.900s | 0.800s | 90 | 2 |",
		"## Result", "run 2: 2 lost",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("record lacks %q:\n%s", want, md)
		}
	}
	var text strings.Builder
	s.Print(&text)
	for _, want := range []string{
		"run 2: b -> a: down +0.400s, decided -, routed +0.600s, RTO 0.900s; 90 acknowledged, 2 lost",
		"2 runs, 2 recovered; RTO p50 0.700s, p90 0.900s, max 0.900s",
		"RPO: 2 of 190 acknowledged writes LOST",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
}
