package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleMessages() []any {
	rec := Record{Epoch: 9, Value: Value{Primary: "pg-b"}}
	acc := Ballot{Epoch: 8, Value: Value{Primary: "pg-a"}}
	return []any{
		obsMsg{Service: "db", Boot: 1, Seq: 2, Entries: []obsEntry{{"pg-a", Observation{Up: true, Role: RolePrimary}}, {"pg-b", Observation{Role: RoleReplica, LagBytes: 1 << 40}}}},
		proposeMsg{Service: "db", Epoch: 10, Value: Value{Primary: "pg-b"}, Kind: kindFailover, From: "pg-a", Base: 9},
		proposeMsg{Service: "db", Epoch: 11, Value: Value{Primary: "pg-c"}, Kind: kindPromoteFailed, From: "pg-b", Base: 10},
		proposeMsg{Service: "db", Epoch: 12, Value: Value{Primary: "pg-c", Fenced: "pg-a", Since: 11, Paused: true}, Kind: kindPause, From: "pg-c", Base: 11},
		voteMsg{Service: "db", Epoch: 10, Value: Value{Primary: "pg-b"}, Granted: true, Prev: acc, MaxVoted: 10, Accepted: acc, Record: rec},
		commitMsg{Service: "db", Record: rec},
		leaseReqMsg{Boot: 5, Counter: 6, Entries: []leaseEntry{{"db", rec}, {"cache", Record{Epoch: 1, Value: Value{Primary: "r"}}}}},
		leaseAckMsg{Boot: 5, Counter: 6, Entries: []leaseAckEntry{{Service: "db", Epoch: 9, OK: true, Record: rec, MaxVoted: 9, Accepted: acc}}},
		syncReqMsg{Boot: 3},
		syncReplyMsg{Boot: 3, Recovering: true, Entries: []syncEntry{{Service: "db", Record: rec, MaxVoted: 10, Accepted: acc}}},
		acceptMsg{Service: "db", Epoch: 10, Value: Value{Primary: "pg-b"}},
		acceptedMsg{Service: "db", Epoch: 10, Value: Value{Primary: "pg-b"}, OK: true, MaxVoted: 10, Accepted: acc, Record: rec},
	}
}

// encodeAny encodes a message in this build's format.
func encodeAny(m any) ([]byte, error) { return encodeIn(m, wireMax) }

func TestCodecRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b, err := encodeAny(m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if b[1] != wireMax {
			t.Errorf("%T: version byte %d", m, b[1])
		}
		got, err := decode(b)
		if err != nil {
			t.Fatalf("%T: decode: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip: got %+v, want %+v", got, m)
		}
		// every strict prefix is refused, never misread
		for i := 0; i < len(b); i++ {
			if _, err := decode(b[:i]); err == nil {
				t.Errorf("%T: prefix of %d/%d bytes decoded", m, i, len(b))
			}
		}
		if _, err := decode(append(bytes.Clone(b), 0)); err == nil {
			t.Errorf("%T: trailing byte accepted", m)
		}
		other := bytes.Clone(b)
		other[1] = wireMax + 1
		if _, err := decode(other); !errors.Is(err, errVersion) {
			t.Errorf("%T: other version: %v", m, err)
		}
	}
}

func TestCodecRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":        nil,
		"one byte":     {byte(msgCommit)},
		"unknown type": {200, wireMax, 0},
		"type zero":    {0, wireMax},
		"oversized":    append([]byte{byte(msgCommit), wireMax}, make([]byte, MaxMessageSize)...),
		"bad kind":     mustEncode(t, proposeMsg{Service: "db", Epoch: 1, Value: Value{Primary: "a"}, Kind: 0}),
		"kind too big": mustEncode(t, proposeMsg{Service: "db", Epoch: 1, Value: Value{Primary: "a"}, Kind: kindResume + 1}),
	} {
		if m, err := decode(b); err == nil {
			t.Errorf("%s: decoded as %+v", name, m)
		}
	}
}

func TestCodecSizeBound(t *testing.T) {
	var m obsMsg
	m.Service = strings.Repeat("s", 255)
	for i := range 60 {
		m.Entries = append(m.Entries, obsEntry{Backend: strings.Repeat("b", 20) + string(rune('a'+i%26)), Obs: Observation{Up: true}})
	}
	if _, err := encodeObs(m); err == nil {
		t.Fatal("an observation above MaxMessageSize was encoded")
	}
}

func mustEncode(t *testing.T, m any) []byte {
	t.Helper()
	b, err := encodeAny(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzDecode checks that no payload makes the decoder panic and that what
// it accepts encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, m := range append(sampleMessages(), richObs) {
		for v := uint8(wireMin); v <= wireMax; v++ {
			b, _ := m.(wireMsg).encode(v)
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		// In the format it came in: every format spoken reads back exactly.
		again, err := encodeIn(m, b[1])
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", m, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
	})
}

// queueNet delivers payloads between machines in order, checking sizes.
type queueNet struct {
	t     *testing.T
	q     []queued
	nodes map[string]*Machine
}

type queued struct {
	from, to string
	msg      []byte
}

type queueTransport struct {
	n    *queueNet
	from string
}

func (q queueTransport) Send(to string, msg []byte) error {
	if limit := msgType(msg[0]).limit(); len(msg) > limit {
		q.n.t.Fatalf("payload type %d of %d bytes above its limit of %d", msg[0], len(msg), limit)
	}
	q.n.q = append(q.n.q, queued{q.from, to, msg})
	return nil
}

func (q queueTransport) Broadcast(_ string, msg []byte) error {
	for name := range q.n.nodes {
		if name != q.from {
			_ = q.Send(name, msg)
		}
	}
	return nil
}

type manualClock struct{ now time.Duration }

func (c *manualClock) Now() time.Duration { return c.now }

func TestManyServicesFitPayloads(t *testing.T) {
	var svcs []ServiceConfig
	for i := range 40 {
		name := fmt.Sprintf("%s-%02d", strings.Repeat("service", 30), i)
		svcs = append(svcs, ServiceConfig{Name: name, Backends: []BackendConfig{
			{Name: strings.Repeat("a", 100), Priority: 2}, {Name: strings.Repeat("b", 100), Priority: 1}}})
	}
	allRoute(t, svcs, "", true)
}

// A fenced set can name a backend since removed from the config, which
// the lease requests' batching (by the config's widest value) cannot
// foresee: the answers must be split to fit, or no service gets a lease.
func TestLeaseAnswersSplitForRemovedFencedNames(t *testing.T) {
	var svcs []ServiceConfig
	for i := range 30 {
		svcs = append(svcs, ServiceConfig{Name: fmt.Sprintf("svc-%02d", i), Backends: []BackendConfig{
			{Name: "db-a", Priority: 3}, {Name: "db-b", Priority: 2}, {Name: "db-c", Priority: 1}}})
	}
	allRoute(t, svcs, Fenced("retired-"+strings.Repeat("x", 150)), false)
}

// A peer whose values are wider than the requester foresaw answers in
// several payloads, each within the packet limit, covering every entry.
func TestLeaseAnswerSplits(t *testing.T) {
	var svcs []ServiceConfig
	st := State{Synced: true, Services: map[string]ServiceState{}}
	var req leaseReqMsg
	for i := range 30 {
		sc := ServiceConfig{Name: fmt.Sprintf("svc-%02d", i), Backends: []BackendConfig{{Name: "db-a"}, {Name: "db-b"}}}
		svcs = append(svcs, sc)
		v := Value{Primary: "db-a", Fenced: Fenced("retired-" + strings.Repeat("x", 150))}
		st.Services[sc.Name] = ServiceState{Record: Record{Epoch: 1, Value: v}, MaxVoted: 1, Accepted: Ballot{Epoch: 1, Value: v}}
		req.Entries = append(req.Entries, leaseEntry{Service: sc.Name, Record: Record{Epoch: 1, Value: Value{Primary: "db-a"}}})
	}
	net := &queueNet{t: t, nodes: map[string]*Machine{}}
	m, err := NewMachine(withLease(Config{Name: "p1", Peers: []string{"p0", "p1", "p2"}, Services: svcs, BootID: 2}, time.Second),
		&manualClock{now: time.Second}, queueTransport{net, "p1"}, &memStore{st: st})
	if err != nil {
		t.Fatal(err)
	}
	m.onLeaseReq("p0", req)
	m.endStep()
	answered := map[string]bool{}
	msgs := 0
	var acks [][]byte
	for _, x := range net.q {
		if x.to == "p0" {
			acks = append(acks, unbatch(t, x.msg)...)
		}
	}
	for _, msg := range acks {
		if msgType(msg[0]) != msgLeaseAck {
			continue
		}
		if len(msg) > MaxMessageSize {
			t.Errorf("a lease answer of %d bytes", len(msg))
		}
		msgs++
		v, err := decode(msg)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range v.(leaseAckMsg).Entries {
			if !e.OK {
				t.Errorf("%s not confirmed", e.Service)
			}
			answered[e.Service] = true
		}
	}
	if msgs < 2 || len(answered) != len(svcs) {
		t.Fatalf("%d answers covering %d of %d services; want the answer split and complete", msgs, len(answered), len(svcs))
	}
}

// allRoute runs three Machines over an in-memory network from a state in
// which every service's record is at epoch 1 on its first backend (with
// fenced as its fenced set), and requires every proxy to route every
// service. With recover, p0 starts empty and learns the state over sync.
func allRoute(t *testing.T, svcs []ServiceConfig, fenced Fenced, recover bool) {
	t.Helper()
	peers := []string{"p0", "p1", "p2"}
	clk := &manualClock{now: time.Second}
	net := &queueNet{t: t, nodes: map[string]*Machine{}}
	for i, p := range peers {
		st := State{Synced: !recover || i > 0, Services: map[string]ServiceState{}}
		if st.Synced {
			for _, s := range svcs {
				v := Value{Primary: s.Backends[0].Name, Fenced: fenced}
				st.Services[s.Name] = ServiceState{Record: Record{Epoch: 1, Value: v}, MaxVoted: 1, Accepted: Ballot{Epoch: 1, Value: v}}
			}
		}
		m, err := NewMachine(withLease(Config{Name: p, Peers: peers, Services: svcs, BootID: uint64(i + 1)}, time.Second),
			clk, queueTransport{net, p}, &memStore{st: st})
		if err != nil {
			t.Fatal(err)
		}
		net.nodes[p] = m
	}
	for step := 0; step < 200; step++ {
		clk.now += 50 * time.Millisecond
		for _, p := range peers {
			net.nodes[p].Tick()
		}
		for len(net.q) > 0 {
			x := net.q[0]
			net.q = net.q[1:]
			net.nodes[x.to].Step(x.from, x.msg)
		}
	}
	for _, p := range peers {
		m := net.nodes[p]
		if m.Recovering() {
			t.Fatalf("%s still recovering", p)
		}
		for _, s := range svcs {
			if b, _ := m.Route(s.Name); b != s.Backends[0].Name {
				t.Fatalf("%s does not route %s: status %+v", p, s.Name, m.Status().Counters)
			}
		}
	}
}

// A service whose backend names could not fit a lease answer (two values,
// each naming every backend) is refused when the Machine is built, with a
// message that says so; one that fits is taken.
func TestServiceFitsCheck(t *testing.T) {
	build := func(names ...string) error {
		var bs []BackendConfig
		for _, n := range names {
			bs = append(bs, BackendConfig{Name: n})
		}
		_, err := NewMachine(withLease(Config{Name: "p0", Peers: []string{"p0", "p1", "p2"}, BootID: 1,
			Services: []ServiceConfig{{Name: "db", Backends: bs}}}, time.Second), &manualClock{}, queueTransport{}, &memStore{})
		return err
	}
	long := func(c string) string { return strings.Repeat(c, 201) }
	if err := build(long("a"), long("b"), long("c")); err == nil || !strings.Contains(err.Error(), "lease answer") {
		t.Fatalf("three 201-byte backend names: %v, want a refusal about the lease answer", err)
	}
	mid := func(c string) string { return strings.Repeat(c, 60) }
	if err := build(mid("a"), mid("b"), mid("c"), mid("d"), mid("e")); err != nil {
		t.Fatalf("five 60-byte backend names: %v", err)
	}
	if err := build("a,b", "c"); err == nil || !strings.Contains(err.Error(), "no commas") {
		t.Fatalf("a comma in a backend name: %v", err)
	}
}

// unbatch returns the payloads a sent message carries.
func unbatch(t *testing.T, msg []byte) [][]byte {
	t.Helper()
	if msgType(msg[0]) != msgBatch {
		return [][]byte{msg}
	}
	_, d, err := header(msg)
	if err != nil {
		t.Fatal(err)
	}
	parts := decBatch(d)
	if d.err != nil {
		t.Fatal(d.err)
	}
	return parts
}

// A voter refuses a failover to a replica that its own fresh view shows
// holding less of the old primary's log than another eligible replica, and
// grants it when the positions are stale (read while the primary answered)
// or when the rule is switched off; with rpo = "zero" it refuses one that
// its own check did not see among the old primary's synchronous standbys.
func TestVoteRefusesAReplicaBehind(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fresh  bool
		knobs  knobs
		refuse bool
		rpo    bool
	}{
		{"fresh positions: refused", true, knobs{}, true, false},
		{"stale positions: granted", false, knobs{}, false, false},
		{"rule off: granted", true, knobs{ignorePositions: true}, false, false},
		{"rpo zero, not synchronous: refused", false, knobs{}, true, true},
		{"rpo zero rule off: granted", false, knobs{ignoreRPO: true}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svcs := []ServiceConfig{{Name: "db", RoleAware: true, RPOZero: tc.rpo, Backends: testBackends}}
			v := Value{Primary: "pg-a", Since: 1}
			st := State{Synced: true, Services: map[string]ServiceState{
				"db": {Record: Record{Epoch: 4, Value: v}, MaxVoted: 4, Accepted: Ballot{Epoch: 4, Value: v}}}}
			net := &queueNet{t: t, nodes: map[string]*Machine{}}
			cfg := withLease(Config{Name: "p1", Peers: []string{"p0", "p1", "p2"}, Services: svcs, BootID: 2}, time.Second)
			cfg.knobs = tc.knobs
			m, err := NewMachine(cfg, &manualClock{now: time.Second}, queueTransport{net, "p1"}, &memStore{st: st})
			if err != nil {
				t.Fatal(err)
			}
			for b, o := range map[string]Observation{
				"pg-a": {Up: false, Position: -1, SyncMask: 1 << 2}, // pg-c was synchronous
				"pg-b": {Up: true, Role: RoleReplica, LagBytes: -1, Lag: -1, Position: 500, PositionFresh: tc.fresh},
				"pg-c": {Up: true, Role: RoleReplica, LagBytes: -1, Lag: -1, Position: 900, PositionFresh: tc.fresh},
			} {
				if err := m.Observe("db", b, o); err != nil {
					t.Fatal(err)
				}
			}
			m.onPropose("p0", proposeMsg{Service: "db", Epoch: 5, Base: 4, Kind: kindFailover, From: "pg-a", Value: Value{Primary: "pg-b", Since: 5}})
			m.endStep()
			var vote *voteMsg
			for _, x := range net.q {
				for _, msg := range unbatch(t, x.msg) {
					if x.to == "p0" && msgType(msg[0]) == msgVote {
						d, err := decode(msg)
						if err != nil {
							t.Fatal(err)
						}
						vm := d.(voteMsg)
						vote = &vm
					}
				}
			}
			if vote == nil {
				t.Fatal("no vote sent")
			}
			if vote.Granted == tc.refuse {
				t.Fatalf("granted %v, want %v", vote.Granted, !tc.refuse)
			}
		})
	}
}

// The size estimates that split lease answers and syncs are the encoded
// sizes: one byte short per value (the paused flag) once made a lease
// answer of 26 services too large to send, and a proxy never got a lease.
func TestEntrySizesAreExact(t *testing.T) {
	v := Value{Primary: "pg-c", Fenced: "pg-a,pg-b", Since: 5, Paused: true}
	e := &enc{}
	e.value(v)
	if len(e.b) != valueSize(v) {
		t.Fatalf("valueSize %d, encoded %d", valueSize(v), len(e.b))
	}
	ack := leaseAckMsg{Boot: 1, Counter: 2, Entries: []leaseAckEntry{{Service: "db", Epoch: 6, OK: true,
		Record: Record{Epoch: 6, Value: v}, MaxVoted: 6, Accepted: Ballot{Epoch: 6, Value: v}}}}
	b, err := encodeLeaseAck(ack)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(b) - listHeader; leaseAckEntrySize(ack.Entries[0]) < want {
		t.Fatalf("leaseAckEntrySize %d below the encoded %d", leaseAckEntrySize(ack.Entries[0]), want)
	}
}
