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
		voteMsg{Service: "db", Epoch: 10, Value: Value{Primary: "pg-b"}, Granted: true, Prev: acc, Promised: 10, Accepted: acc, Record: rec},
		commitMsg{Service: "db", Record: rec},
		leaseReqMsg{Boot: 5, Counter: 6, Entries: []leaseEntry{{"db", rec}, {"cache", Record{Epoch: 1, Value: Value{Primary: "r"}}}}},
		leaseAckMsg{Boot: 5, Counter: 6, Entries: []leaseAckEntry{{Service: "db", Epoch: 9, OK: true, Record: rec, Promised: 9, Accepted: acc}}},
		syncReqMsg{Boot: 3},
		syncReplyMsg{Boot: 3, Recovering: true, Entries: []syncEntry{{Service: "db", Record: rec, Promised: 10, Accepted: acc}}},
		acceptMsg{Service: "db", Epoch: 10, Value: Value{Primary: "pg-b"}},
		acceptedMsg{Service: "db", Epoch: 10, Value: Value{Primary: "pg-b"}, OK: true, Promised: 10, Accepted: acc, Record: rec},
	}
}

func encodeAny(m any) ([]byte, error) {
	switch x := m.(type) {
	case obsMsg:
		return encodeObs(x)
	case proposeMsg:
		return encodePropose(x)
	case voteMsg:
		return encodeVote(x)
	case commitMsg:
		return encodeCommit(x)
	case leaseReqMsg:
		return encodeLeaseReq(x)
	case leaseAckMsg:
		return encodeLeaseAck(x)
	case syncReqMsg:
		return encodeSyncReq(x)
	case syncReplyMsg:
		return encodeSyncReply(x)
	case acceptMsg:
		return encodeAccept(x)
	case acceptedMsg:
		return encodeAccepted(x)
	}
	panic("unknown message")
}

func TestCodecRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b, err := encodeAny(m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if b[1] != wireVersion {
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
		other[1] = wireVersion + 1
		if _, err := decode(other); !errors.Is(err, errVersion) {
			t.Errorf("%T: other version: %v", m, err)
		}
	}
}

func TestCodecRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":        nil,
		"one byte":     {byte(msgCommit)},
		"unknown type": {200, wireVersion, 0},
		"type zero":    {0, wireVersion},
		"oversized":    append([]byte{byte(msgCommit), wireVersion}, make([]byte, MaxMessageSize)...),
		"bad kind":     mustEncode(t, proposeMsg{Service: "db", Epoch: 1, Value: Value{Primary: "a"}, Kind: 0}),
		"kind too big": mustEncode(t, proposeMsg{Service: "db", Epoch: 1, Value: Value{Primary: "a"}, Kind: kindUnfence + 1}),
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
	for _, m := range sampleMessages() {
		b, _ := encodeAny(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		again, err := encodeAny(m)
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
	if len(msg) > MaxMessageSize {
		q.n.t.Fatalf("payload type %d of %d bytes above MaxMessageSize", msg[0], len(msg))
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
			{Name: strings.Repeat("a", 200), Priority: 2}, {Name: strings.Repeat("b", 200), Priority: 1}}})
	}
	peers := []string{"p0", "p1", "p2"}
	clk := &manualClock{now: time.Second}
	net := &queueNet{t: t, nodes: map[string]*Machine{}}
	for i, p := range peers {
		st := State{Synced: i > 0, Services: map[string]ServiceState{}} // p0 recovers over sync
		if i > 0 {
			for _, s := range svcs {
				st.Services[s.Name] = ServiceState{Record: Record{Epoch: 1, Value: Value{Primary: s.Backends[0].Name}}, Promised: 1,
					Accepted: Ballot{Epoch: 1, Value: Value{Primary: s.Backends[0].Name}}}
			}
		}
		m, err := NewMachine(Config{Name: p, Peers: peers, Services: svcs, BootID: uint64(i + 1), LeaseTimeout: time.Second},
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
