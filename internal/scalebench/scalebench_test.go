package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// The generated configs parse with the config package, every port is
// handed out once, and 1,000 services fit in a config file.
func TestSpecConfigs(t *testing.T) {
	dir := t.TempDir()
	s, err := newSpec(dir, 3, 1000, time.Second, "127.0.0.1:1", "127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	timings, err := s.validate()
	if err != nil {
		t.Fatal(err)
	}
	// The report's settings are what the config package filled in: the
	// interval given, the defaults for the rest.
	if want := "interval 1s, timeout 900ms, fall 5"; !strings.HasPrefix(timings, want) {
		t.Errorf("timings %q, want them to begin %q", timings, want)
	}
	seen := map[string]bool{}
	for _, n := range s.nodes {
		for _, a := range append([]string{n.admin, n.gossip}, n.listen...) {
			if seen[a] {
				t.Fatalf("address %s handed out twice", a)
			}
			seen[a] = true
		}
	}
	if len(seen) != 3*(2+1000) {
		t.Fatalf("%d addresses, want %d", len(seen), 3*1002)
	}
	cfg, _, err := config.Parse("qp2.toml", []byte(s.config(1)))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster.NodeName != "qp2" || cfg.Cluster.StateDir != s.nodes[1].stateDir {
		t.Fatalf("qp2's cluster table: %+v", cfg.Cluster)
	}
	svc := cfg.Services[999]
	if svc.Name != "s1000" || svc.Listen != s.nodes[1].listen[999] {
		t.Fatalf("last service: name %q listen %q", svc.Name, svc.Listen)
	}
	h := svc.Health
	if h.Kind != "tcp" || h.Interval != time.Second {
		t.Fatalf("health: %+v", h)
	}
	if len(svc.Backends) != 2 || svc.Backends[0].Address != "127.0.0.1:1" || svc.Backends[0].Priority <= svc.Backends[1].Priority {
		t.Fatalf("backends: %+v", svc.Backends)
	}
}

// Too many services for one config file is an error that says so, before
// anything starts.
func TestSpecTooLarge(t *testing.T) {
	s, err := newSpec(t.TempDir(), 1, 2000, time.Second, "127.0.0.1:1", "127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.validate(); err == nil || !strings.Contains(err.Error(), "use fewer services") {
		t.Fatalf("2000 services: %v", err)
	}
}

func TestParseLists(t *testing.T) {
	if got, err := parseInts("3, 5"); err != nil || len(got) != 2 || got[0] != 3 || got[1] != 5 {
		t.Fatalf("parseInts: %v %v", got, err)
	}
	for _, bad := range []string{"", "0", "3,x"} {
		if _, err := parseInts(bad); err == nil {
			t.Errorf("parseInts(%q): no error", bad)
		}
	}
	if got, err := parseIntervals("2s", 3); err != nil || len(got) != 3 || got[2] != 2*time.Second {
		t.Fatalf("parseIntervals one for all: %v %v", got, err)
	}
	if got, err := parseIntervals("1s,2s", 2); err != nil || got[0] != time.Second || got[1] != 2*time.Second {
		t.Fatalf("parseIntervals one each: %v %v", got, err)
	}
	for _, bad := range []string{"1s,2s", "10ms", "1"} {
		if _, err := parseIntervals(bad, 3); err == nil {
			t.Errorf("parseIntervals(%q, 3): no error", bad)
		}
	}
}

func TestParseCounters(t *testing.T) {
	out := `Chain qpscale-42 (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      10     1200            udp  --  *      *       0.0.0.0/0            0.0.0.0/0            multiport ports 20001
       3      180            tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            multiport ports 20001
      25     3000            udp  --  *      *       0.0.0.0/0            0.0.0.0/0            multiport ports 20001,20002
`
	got, err := parseCounters(out)
	if err != nil || len(got) != 3 || got[0] != 1200 || got[1] != 180 || got[2] != 3000 {
		t.Fatalf("parseCounters = %v, %v", got, err)
	}
	if _, err := parseCounters("Chain x\n"); err == nil {
		t.Fatal("no header: no error")
	}
}

func TestSummarizeLog(t *testing.T) {
	log := `time=T level=INFO msg="backend up" service=s1
time=T level=WARN msg="backend down" service=s1 reason="3 consecutive checks failed"
time=T level=WARN msg="backend down" service=s2
time=T level=ERROR msg=oops
not a log line
`
	s, err := summarizeLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if s.lines != 5 || s.byLevel["WARN"] != 2 || s.byLevel["ERROR"] != 1 || s.byLevel[""] != 1 {
		t.Fatalf("summary: %+v", s)
	}
	if len(s.top) != 2 || s.top[0].msg != "backend down" || s.top[0].n != 2 || s.top[1].msg != "oops" {
		t.Fatalf("top: %+v", s.top)
	}
	if got := s.levels(); got != "INFO 1, WARN 2, ERROR 1, other 1" {
		t.Fatalf("levels: %q", got)
	}
}

// A backend accepts until closed; then connections are refused, which is
// what the failover phase relies on.
func TestBackendClose(t *testing.T) {
	b, err := listenBackend()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", b.addr())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	testwait.For(t, "the backend to count the accept", 5*time.Second, func() bool { return b.accepts.Load() == 1 })
	b.close()
	if c, err := net.Dial("tcp", b.addr()); err == nil {
		c.Close()
		t.Fatal("dial after close succeeded")
	}
}

func TestRoutesTo(t *testing.T) {
	for _, c := range []struct {
		routing, backend string
		want             bool
	}{{"a", "a", true}, {"b", "a", false}, {"", "a", false}, {"a", "", true}, {"", "", false}} {
		if got := routesTo(c.routing, c.backend); got != c.want {
			t.Errorf("routesTo(%q, %q) = %v", c.routing, c.backend, got)
		}
	}
}

func TestQuorumDown(t *testing.T) {
	dir := t.TempDir()
	since := time.Date(2026, 12, 6, 19, 46, 34, 0, time.UTC)
	logs := map[string]string{
		// an earlier down of a, one of another address, then a's
		"qp1.log": `time=2026-12-06T19:46:30.000Z level=WARN msg="backend down" service=s1 backend=a address=127.0.0.1:1 reason=x
time=2026-12-06T19:46:36.000Z level=WARN msg="backend down" service=s1 backend=b address=127.0.0.1:2 reason=x
time=2026-12-06T19:46:37.500Z level=WARN msg="backend down" services=1000 address=127.0.0.1:1 reason="3 failed" targets="s1/a and 999 more"
`,
		"qp2.log": `time=2026-12-06T19:46:37.100Z level=WARN msg="backend down" service=s1 backend=a address=127.0.0.1:1 reason=x
`,
		"qp3.log": `time=2026-12-06T19:46:38.000Z level=INFO msg="cluster: route" service=s1 backend=b
`,
	}
	var paths []string
	for _, name := range []string{"qp1.log", "qp2.log", "qp3.log"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(logs[name]), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	// Two of three saw it: the quorum's last at 37.5 s.
	d, err := quorumDown(paths, "127.0.0.1:1", since)
	if err != nil || d != 3500*time.Millisecond {
		t.Fatalf("quorumDown = %v, %v; want 3.5s", d, err)
	}
	// Only qp1 saw b go down: no quorum.
	if d, err := quorumDown(paths, "127.0.0.1:2", since); err != nil || d != 0 {
		t.Fatalf("quorumDown(b) = %v, %v; want 0", d, err)
	}
	r := &result{failAll: 4 * time.Second, quorumDown: 3500 * time.Millisecond}
	if got := afterDown(r); got != 500*time.Millisecond {
		t.Fatalf("afterDown = %v", got)
	}
}
