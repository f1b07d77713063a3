package cluster

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// TestScaleMassFailover: three proxies, hundreds of services over the same
// two backends (real FileStores, so every save is an fsync), all routed to
// the first; then the first goes down for every service at once. Every
// proxy must route every service to the standby, with no payload dropped
// for a full queue. The time it takes, the proposals given up and the
// saves are figures (QP_SCALE_SERVICES sets the count; make bench runs
// 1,000).
func TestScaleMassFailover(t *testing.T) {
	services := 300
	if testing.Short() {
		services = 100
	}
	if v := os.Getenv("QP_SCALE_SERVICES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("QP_SCALE_SERVICES=%q: want a positive integer", v)
		}
		services = n
	}
	const lease = time.Second
	backends := []BackendConfig{{Name: "db-a", Priority: 20}, {Name: "db-b", Priority: 10}}
	var svcs []ServiceConfig
	for i := range services {
		svcs = append(svcs, ServiceConfig{Name: fmt.Sprintf("svc-%04d", i), Backends: backends})
	}
	net := &memNet{nodes: map[string]*Node{}, cut: map[[2]string]bool{}}
	peers := []string{"proxy-0", "proxy-1", "proxy-2"}
	nodes := map[string]*Node{}
	for _, name := range peers {
		store, err := OpenFileStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		cfg := withLease(Config{Name: name, Peers: peers, Services: svcs}, lease)
		n, err := NewNode(cfg, store, BootClock{}, NodeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		net.mu.Lock()
		net.nodes[name] = n
		net.mu.Unlock()
		nodes[name] = n
		t.Cleanup(func() {
			n.Close()
			store.Close()
		})
	}
	observeAll := func(backend string, up bool) {
		for _, n := range nodes {
			for _, s := range svcs {
				n.Observe(s.Name, backend, Observation{Up: up, Role: RoleUnknown, LagBytes: 0, Lag: -1, Position: -1})
			}
		}
	}
	observeAll("db-a", true)
	observeAll("db-b", true)
	start := time.Now()
	for _, name := range peers {
		nodes[name].Start(memTransport{net: net, from: name})
	}
	allRouteTo := func(backend string) func() (bool, string) {
		return func() (bool, string) {
			routed := 0
			for _, n := range nodes {
				for _, s := range svcs {
					if b, _ := n.Route(s.Name); b == backend {
						routed++
					}
				}
			}
			return routed == len(nodes)*services, fmt.Sprintf("%d of %d (service, proxy) pairs routed to %s", routed, len(nodes)*services, backend)
		}
	}
	testwait.ForState(t, 90*time.Second, allRouteTo("db-a"))
	t.Logf("FIGURE %d services, 3 proxies: every service routed on every proxy %.2fs after the start", services, time.Since(start).Seconds())

	before := map[string]Counters{}
	for name, n := range nodes {
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		before[name] = st.Counters
	}
	start = time.Now()
	observeAll("db-a", false)
	testwait.ForState(t, 90*time.Second, allRouteTo("db-b"))
	took := time.Since(start)
	var proposals, givenUp, saves, commits uint64
	for name, n := range nodes {
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		c, b := st.Counters, before[name]
		proposals += c.Proposals - b.Proposals
		givenUp += c.GivenUp - b.GivenUp
		saves += c.Saves - b.Saves
		commits += c.Commits - b.Commits
		if c.QueueFull != 0 {
			t.Errorf("%s dropped %d payloads on a full queue", name, c.QueueFull)
		}
	}
	t.Logf("FIGURE mass failover of %d services, 3 proxies: all on the standby on every proxy after %.2fs; %d proposals, %d given up, %d commits, %d saves (fsyncs) over the three",
		services, took.Seconds(), proposals, givenUp, commits, saves)
	if commits < uint64(services) {
		t.Errorf("%d commits for %d services", commits, services)
	}
	// One save per step, not one per service and message: a mass failover
	// with a save per service would take several per service per proxy.
	if saves >= uint64(services) {
		t.Errorf("%d saves for %d services: saves are not shared by the services of a step", saves, services)
	}
}

// The full-state sync a joining proxy gets covers every service (a count
// byte once cut it off at 255).
func TestFullSyncCoversEveryService(t *testing.T) {
	const services = 1000
	st := State{Synced: true, Services: map[string]ServiceState{}}
	var svcs []ServiceConfig
	for i := range services {
		sc := ServiceConfig{Name: fmt.Sprintf("svc-%04d", i), Backends: []BackendConfig{{Name: "db-a"}, {Name: "db-b"}}}
		svcs = append(svcs, sc)
		st.Services[sc.Name] = ServiceState{Record: Record{Epoch: uint64(i + 1), Value: Value{Primary: "db-b", Since: uint64(i + 1)}}}
	}
	m, err := NewMachine(withLease(Config{Name: "p1", Peers: []string{"p0", "p1", "p2"}, Services: svcs, BootID: 1}, time.Second),
		&manualClock{now: time.Second}, nopTransport{}, &memStore{st: st})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := decodeRecords(m.localState())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != services {
		t.Fatalf("%d of %d services in the full sync", len(recs), services)
	}
	for name, ss := range st.Services {
		if recs[name] != ss.Record {
			t.Fatalf("%s: synced %+v, want %+v", name, recs[name], ss.Record)
		}
	}
	if _, err := decodeRecords(m.localState()[:5]); err == nil {
		t.Fatal("a truncated state decoded")
	}
	// A sync of the format before (no mark, records without the paused
	// flag) is refused, not misread.
	if _, err := decodeRecords(m.localState()[len(stateMark):]); err == nil {
		t.Fatal("a sync without the version mark decoded")
	}
	// A repeated sync of the same records changes nothing and counts
	// nothing stale; a newer record is adopted.
	newer := Record{Epoch: 5000, Value: Value{Primary: "db-a", Since: 5000}}
	recs["svc-0007"] = newer
	m.Batch(func() { m.mergeRecords(recs) })
	if c := m.counters; c.Stale != 0 || c.Adoptions != 1 {
		t.Errorf("merging a sync of equal records and one newer: %d stale, %d adoptions; want 0 and 1", c.Stale, c.Adoptions)
	}
	if got := m.svcState("svc-0007").Record; got != newer {
		t.Errorf("svc-0007 after the merge: %+v, want %+v", got, newer)
	}
}

// rankWait: a lower-named proxy waits its rank delay, then goes on waiting
// only while a higher-named proxy is at work on rounds (proposals or
// accepts for any service, as in a mass failover that comes in batches),
// and never more than a lease beyond the rank delay.
func TestRankWaitPerBatch(t *testing.T) {
	const lease = time.Second
	peers := []string{"p0", "p1", "p2", "p3", "p4"}
	clk := &manualClock{now: 10 * time.Second}
	svcs := []ServiceConfig{{Name: "db", Backends: []BackendConfig{{Name: "a", Priority: 2}, {Name: "b", Priority: 1}}}}
	mk := func(name string) *Machine {
		m, err := NewMachine(withLease(Config{Name: name, Peers: peers, Services: svcs, BootID: 1}, lease),
			clk, nopTransport{}, &memStore{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range peers {
			if p != name {
				m.heard[p] = clk.now
			}
		}
		return m
	}
	// deliver hands m a round's message from a peer at a time, as the
	// Node would: a proposal, or an accept when accept is set.
	epoch := uint64(1)
	deliver := func(m *Machine, from string, at time.Duration, accept bool) {
		t.Helper()
		clk.now, epoch = at, epoch+1
		v := Value{Primary: "b"}
		var b []byte
		var err error
		if accept {
			b, err = encodeAccept(acceptMsg{Service: "db", Epoch: epoch, Value: v})
		} else {
			b, err = encodePropose(proposeMsg{Service: "db", Epoch: epoch, Value: v, Kind: kindFailover})
		}
		if err != nil {
			t.Fatal(err)
		}
		m.Step(from, b)
	}
	m := mk("p3")
	s := m.svcs["db"]
	down := clk.now
	s.downSince = down
	d := m.rankDelay(down)
	if d != lease/8 {
		t.Fatalf("p3's rank delay %v, want %v (one higher peer)", d, lease/8)
	}
	at := func(after time.Duration) bool { return m.rankWait(s, down+after) }
	if !at(d / 2) {
		t.Error("p3 proposed within its rank delay")
	}
	if at(d) {
		t.Error("p3 waited past its rank delay with no higher proxy at work")
	}
	// p2 is named lower: its rounds do not hold p3 back.
	deliver(m, "p2", down+d/2, false)
	if at(d) {
		t.Error("p3 waited for a lower-named proxy's round")
	}
	// p4 proposed something (another service of the same failure) just
	// before p3's rank delay ended: p3 waits for p4's next batch.
	deliver(m, "p4", down+d/2, false)
	if !at(d) {
		t.Error("p3 proposed while p4 was at work")
	}
	if at(d/2 + m.higherWindow()) {
		t.Error("p3 still waited a window after p4's last round")
	}
	// p4 keeps at it: p3 waits, but not beyond a lease after its delay.
	deliver(m, "p4", down+d+lease-10*time.Millisecond, true)
	if !at(d + lease - time.Millisecond) {
		t.Error("p3 proposed while p4 was still at work within the lease")
	}
	if at(d + lease) {
		t.Error("p3 waited more than a lease beyond its rank delay")
	}
	// The highest proxy never waits.
	top := mk("p4")
	ts := top.svcs["db"]
	ts.downSince = down
	deliver(top, "p3", down, false)
	if top.rankWait(ts, down) {
		t.Error("p4, the highest-named proxy, waited")
	}
}
