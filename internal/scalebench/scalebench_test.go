package main

import (
	"net"
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
	if err := s.validate(); err != nil {
		t.Fatal(err)
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
	if h.Kind != "tcp" || h.Interval != time.Second || h.Timeout != 500*time.Millisecond {
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
	if err := s.validate(); err == nil || !strings.Contains(err.Error(), "use fewer services") {
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
	if checkTimeout(5*time.Second) != time.Second || checkTimeout(400*time.Millisecond) != 200*time.Millisecond {
		t.Fatal("checkTimeout")
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
