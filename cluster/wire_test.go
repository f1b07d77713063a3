package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// older is what a payload of format v says of m once decoded: the fields
// format v lacks read as unknown.
func older(m any, v uint8) any {
	o, ok := m.(obsMsg)
	if !ok || v >= 6 {
		return m
	}
	o.Entries = append([]obsEntry(nil), o.Entries...)
	for i := range o.Entries {
		x := &o.Entries[i].Obs
		x.Position, x.PositionFresh, x.SyncMask, x.Upstream = -1, false, 0, ""
	}
	return o
}

// richObs has every field format 6 added.
var richObs = obsMsg{Service: "db", Boot: 7, Seq: 8, Entries: []obsEntry{
	{"pg-a", Observation{Up: false, Role: RolePrimary, LagBytes: 0, Lag: -1, Position: -1, SyncMask: 0b110}},
	{"pg-b", Observation{Up: true, Role: RoleReplica, LagBytes: 10, Lag: time.Second, Position: 1 << 33, PositionFresh: true, Upstream: "pg-a"}},
}}

// Every pair of formats this build speaks: a payload written in one and
// rewritten in the other decodes to the same message, less what the
// lower format lacks, which reads as unknown; rewriting is the same as
// writing in the target format directly.
func TestCodecVersionPairs(t *testing.T) {
	msgs := append(sampleMessages(), richObs)
	for from := uint8(wireMin); from <= wireMax; from++ {
		for to := uint8(wireMin); to <= wireMax; to++ {
			for _, m := range msgs {
				b, err := m.(wireMsg).encode(from)
				if err != nil {
					t.Fatalf("%T in %d: %v", m, from, err)
				}
				if b[1] != from {
					t.Fatalf("%T in %d: version byte %d", m, from, b[1])
				}
				got, err := transcode(b, to)
				if err != nil {
					t.Fatalf("%T %d->%d: %v", m, from, to, err)
				}
				if got[1] != to {
					t.Fatalf("%T %d->%d: version byte %d", m, from, to, got[1])
				}
				x, err := decode(got)
				if err != nil {
					t.Fatalf("%T %d->%d: decode: %v", m, from, to, err)
				}
				if want := older(m, min(from, to)); !reflect.DeepEqual(x, want) {
					t.Errorf("%d->%d: got %+v, want %+v", from, to, x, want)
				}
				direct, _ := older(m, from).(wireMsg).encode(to)
				if !bytes.Equal(direct, got) {
					t.Errorf("%T %d->%d: rewritten %x, written directly %x", m, from, to, got, direct)
				}
				// A batch is rewritten part by part.
				bb, err := transcode(encodeBatch([][]byte{b, b}, from), to)
				if err != nil {
					t.Fatalf("batch %d->%d: %v", from, to, err)
				}
				xs, err := decode(bb)
				if err != nil || bb[1] != to || len(xs.(batchMsg)) != 2 || !reflect.DeepEqual(xs.(batchMsg)[1], older(m, min(from, to))) {
					t.Errorf("batch %d->%d: %+v, %v", from, to, xs, err)
				}
			}
		}
	}
	for _, v := range []uint8{wireMin - 1, wireMax + 1} {
		b, _ := encodeCommit(commitMsg{Service: "db", Record: Record{Epoch: 1, Value: Value{Primary: "a"}}})
		if _, err := transcode(b, v); !errors.Is(err, errVersion) {
			t.Errorf("rewritten in format %d: %v", v, err)
		}
		b[1] = v
		if _, err := decode(b); !errors.Is(err, errVersion) {
			t.Errorf("format %d decoded: %v", v, err)
		}
	}
}

// A format-5 observation, byte by byte as the builds of format 5 wrote it
// (cluster/codec.go before format 6), reads with positions unknown.
func TestCodecReadsFormat5Observation(t *testing.T) {
	b := []byte{byte(msgObservation), 5, 2, 'd', 'b'}
	b = binary.BigEndian.AppendUint64(b, 7) // boot
	b = binary.BigEndian.AppendUint64(b, 8) // seq
	b = append(b, 1, 4, 'p', 'g', '-', 'b', 1, byte(RoleReplica))
	b = binary.BigEndian.AppendUint64(b, 10)                  // lag bytes
	b = binary.BigEndian.AppendUint64(b, uint64(time.Second)) // lag
	want := obsMsg{Service: "db", Boot: 7, Seq: 8, Entries: []obsEntry{{"pg-b",
		Observation{Up: true, Role: RoleReplica, LagBytes: 10, Lag: time.Second, Position: -1}}}}
	got, err := decode(b)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, want)
	}
	mine, _ := want.encode(5)
	if !bytes.Equal(mine, b) {
		t.Fatalf("format 5 written as %x, the format-5 builds wrote %x", mine, b)
	}
}

// The full-state sync is read in every format spoken, and written in the
// lowest format a peer is sent in.
func TestStateSyncFormats(t *testing.T) {
	m := wireMachine(t, 0)
	for v := uint8(wireMin); v <= wireMax; v++ {
		m.peerMeta("p1", []byte{wireMetaLayout, v, v})
		m.peerMeta("p2", WireMeta())
		st := m.localState()
		if st[2] != v {
			t.Errorf("with a peer of format %d the sync is in format %d", v, st[2])
		}
		recs, err := decodeRecords(st)
		if err != nil || recs["db"].Primary != "a" {
			t.Errorf("format %d: %v %v", v, recs, err)
		}
	}
	st := m.localState()
	for _, v := range []uint8{wireMin - 1, wireMax + 1} {
		st[2] = v
		if _, err := decodeRecords(st); !errors.Is(err, errVersion) {
			t.Errorf("sync of format %d: %v", v, err)
		}
	}
}

// sentTransport records what a Machine hands its transport.
type sentTransport struct {
	sent       map[string][][]byte
	broadcasts map[string][]byte
}

func (s *sentTransport) Send(to string, b []byte) error {
	s.sent[to] = append(s.sent[to], bytes.Clone(b))
	return nil
}

func (s *sentTransport) Broadcast(key string, b []byte) error {
	s.broadcasts[key] = bytes.Clone(b)
	return nil
}

// wireMachine is proxy p0 of p0, p1, p2 (p0 speaks up to format hi; 0:
// the build's), with a record naming "a".
func wireMachine(t *testing.T, hi uint8) *Machine {
	t.Helper()
	cfg := withLease(Config{Name: "p0", Peers: []string{"p0", "p1", "p2"}, BootID: 1,
		Services: []ServiceConfig{{Name: "db", Backends: []BackendConfig{{Name: "a", Priority: 2}, {Name: "b", Priority: 1}}}}}, time.Second)
	cfg.knobs.wireHi = hi
	st := State{Synced: true, Services: map[string]ServiceState{"db": {Record: Record{Epoch: 3, Value: Value{Primary: "a", Since: 3}}}}}
	store := &memStore{st: st}
	m, err := NewMachine(cfg, &manualClock{now: time.Hour}, &sentTransport{sent: map[string][][]byte{}, broadcasts: map[string][]byte{}}, store)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *Machine) sentTr() *sentTransport { return m.tr.(*sentTransport) }

// formatsOf lists the version bytes of what p0 sent peer.
func formatsOf(s *sentTransport, peer string) map[uint8]bool {
	out := map[uint8]bool{}
	for _, b := range s.sent[peer] {
		out[b[1]] = true
	}
	return out
}

// A peer is sent the highest format both speak: by its advertised range,
// else by what its payloads carry, else this build's highest. An
// observation broadcast goes once per format in use.
func TestWireNegotiation(t *testing.T) {
	var logs testenv.Buffer
	m := wireMachine(t, 0)
	m.log = slog.New(slog.NewTextHandler(&logs, nil))
	if v := m.sendVersion("p1"); v != wireMax {
		t.Fatalf("a peer nothing is known of is sent format %d", v)
	}
	m.peerMeta("p1", WireMeta())
	m.peerMeta("p2", nil) // an older build: no range advertised
	lease, _ := encodeLeaseReq(leaseReqMsg{Boot: 9, Counter: 1})
	lease5, _ := leaseReqMsg{Boot: 9, Counter: 2}.encode(5)
	m.Step("p2", lease5)
	if v := m.sendVersion("p2"); v != 5 {
		t.Fatalf("a peer whose payloads are of format 5 is sent format %d", v)
	}
	if !strings.Contains(logs.String(), "peer p2 speaks wire format 5: it is sent format 5 until it is upgraded") {
		t.Errorf("no line about p2's format:\n%s", logs.String())
	}
	want := map[string]wireView{"p0": {"5..6", 6}, "p1": {"5..6", 6}, "p2": {"5", 5}}
	if got := m.wireViews(); !reflect.DeepEqual(got, want) {
		t.Errorf("members' formats %+v, want %+v", got, want)
	}
	// An observation goes straight to each peer in its format, and by
	// gossip once per format.
	if err := m.Observe("db", "a", Observation{Up: true, Role: RolePrimary, Lag: -1, Position: 5, PositionFresh: true}); err != nil {
		t.Fatal(err)
	}
	s := m.sentTr()
	if f := formatsOf(s, "p1"); !reflect.DeepEqual(f, map[uint8]bool{wireMax: true}) {
		t.Errorf("p1 was sent formats %v", f)
	}
	if f := formatsOf(s, "p2"); !reflect.DeepEqual(f, map[uint8]bool{5: true}) {
		t.Errorf("p2 was sent formats %v", f)
	}
	if b := s.broadcasts["obs/db"]; b == nil || b[1] != wireMax {
		t.Errorf("broadcast in format %d: %x", wireMax, b)
	}
	if b := s.broadcasts["obs/db@5"]; b == nil || b[1] != 5 {
		t.Errorf("broadcast in format 5: %x", b)
	}

	// p2 comes back upgraded: it advertises its range and gets format 6;
	// the broadcast goes once again.
	m.peerMeta("p2", WireMeta())
	if v := m.sendVersion("p2"); v != wireMax {
		t.Fatalf("the upgraded p2 is sent format %d", v)
	}
	clear(s.broadcasts)
	_ = m.Observe("db", "a", Observation{Up: true, Role: RolePrimary, Lag: -1, Position: 6, PositionFresh: true})
	if len(s.broadcasts) != 1 || s.broadcasts["obs/db"] == nil {
		t.Errorf("broadcasts with every peer on format %d: %v", wireMax, s.broadcasts)
	}
	g := m.counters.Garbage
	m.Step("p1", lease)
	m.Step("p1", lease5)
	if m.counters.Garbage != g || m.counters.WireVersion != 0 {
		t.Errorf("payloads of formats 5 and 6 dropped: %+v", m.counters)
	}
}

// A peer that speaks no format of ours is warned about once, in words,
// counted, sent nothing, and nothing it sends is taken.
func TestWireIncompatiblePeer(t *testing.T) {
	var logs testenv.Buffer
	m := wireMachine(t, 0)
	m.log = slog.New(slog.NewTextHandler(&logs, nil))
	m.peerMeta("p2", []byte{wireMetaLayout, wireMax + 1, wireMax + 2})
	want := "peer p2 speaks wire formats 7..8, this proxy 5..6: its messages are dropped; upgrade one proxy at a time"
	if !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("no warning %q:\n%s", want, logs.String())
	}
	// Even a payload of a format we speak is dropped: its sender said it
	// does not speak it.
	commit, _ := encodeCommit(commitMsg{Service: "db", Record: Record{Epoch: 9, Value: Value{Primary: "b", Since: 9}}})
	for range 3 {
		m.Step("p2", commit)
	}
	if m.counters.WireVersion != 3 {
		t.Errorf("WireVersion = %d, want 3", m.counters.WireVersion)
	}
	if r := m.svcState("db").Record; r.Epoch != 3 {
		t.Errorf("a commit from a peer of other formats was taken: %+v", r)
	}
	if strings.Count(logs.String(), "speaks wire formats") != 1 {
		t.Errorf("warned more than once:\n%s", logs.String())
	}
	if v := m.wireViews()["p2"]; v != (wireView{"7..8", 0}) {
		t.Errorf("p2's formats as members show them: %+v", v)
	}
	_ = m.Observe("db", "a", Observation{Up: true, Role: RolePrimary, Lag: -1, Position: -1})
	if n := len(m.sentTr().sent["p2"]); n != 0 {
		t.Errorf("%d payloads sent to a peer of other formats", n)
	}

	// An older build that advertises nothing and sends format 4.
	m.peerMeta("p1", nil)
	old := bytes.Clone(commit)
	old[1] = 4
	m.Step("p1", old)
	m.Step("p1", old)
	if !strings.Contains(logs.String(), "peer p1 speaks wire format 4, this proxy 5..6") || strings.Count(logs.String(), "peer p1 speaks") != 1 {
		t.Errorf("format 4 not warned about once:\n%s", logs.String())
	}
}

// Proxies of formats 5 (an in-process stand-in for an older build: it
// speaks up to 5 and advertises nothing) and 6 in one cluster bootstrap
// and fail over together.
func TestNodeMixedWireFormats(t *testing.T) {
	c := newRoleCluster(t, 3, nil, 0, func(c *testCluster) { c.wireHi = map[string]uint8{"proxy-2": 5} })
	// The newer two know each other's range from gossip meta; proxy-2
	// advertises none.
	for _, a := range []string{"proxy-0", "proxy-1"} {
		for _, b := range c.peers {
			if a != b {
				meta := WireMeta()
				if b == "proxy-2" {
					meta = nil
				}
				c.nodes[a].OnPeerMeta(b, meta)
			}
		}
	}
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
	for _, p := range c.peers[1:] {
		c.nodes[p].Observe("db", "pg-a", Observation{Up: false, Lag: -1, Position: -1})
	}
	c.nodes["proxy-0"].Observe("db", "pg-a", Observation{Up: false, Lag: -1, Position: -1})
	c.waitFor("failover to pg-b", 20*time.Second, c.allRoute("pg-b"))
	var v01, v02 uint8
	if err := c.nodes["proxy-0"].call(func() {
		v01, v02 = c.nodes["proxy-0"].m.sendVersion("proxy-1"), c.nodes["proxy-0"].m.sendVersion("proxy-2")
	}); err != nil {
		t.Fatal(err)
	}
	if v01 != wireMax || v02 != 5 {
		t.Errorf("proxy-0 sends proxy-1 format %d, proxy-2 format %d", v01, v02)
	}
	st, _ := c.nodes["proxy-2"].Status()
	t.Logf("proxy-2 (format 5) dropped %d payloads of format 6 before the others heard its format", st.Counters.WireVersion)
}

// A peer that advertises nothing is sent the format of its latest payload:
// one of its previous run (this build), still on its way when it came back
// as an older build, does not fix the format for good.
func TestWireFollowsLatestPayloadOfOlderBuild(t *testing.T) {
	m := wireMachine(t, 0)
	m.peerMeta("p2", nil)
	lease6, _ := encodeLeaseReq(leaseReqMsg{Boot: 9, Counter: 1})
	lease5, _ := leaseReqMsg{Boot: 10, Counter: 1}.encode(5)
	m.Step("p2", lease5)
	m.Step("p2", lease6) // late, from before the restart
	if v := m.sendVersion("p2"); v != wireMax {
		t.Fatalf("after a payload of format %d: sent format %d", wireMax, v)
	}
	m.Step("p2", lease5)
	if v := m.sendVersion("p2"); v != 5 {
		t.Fatalf("after a payload of format 5 again: sent format %d", v)
	}
}

// A full-state sync byte by byte as the format-5 builds wrote it
// (cluster/node.go before format 6) is read.
func TestStateSyncReadsFormat5(t *testing.T) {
	b := []byte{0xFF, 0xFE, 5, 0, 1, 2, 'd', 'b'}
	b = binary.BigEndian.AppendUint64(b, 7)    // epoch
	b = append(b, 1, 'a', 0, 3, 'b', ',', 'c') // primary, fenced
	b = binary.BigEndian.AppendUint64(b, 6)    // since
	b = append(b, 1)                           // paused
	recs, err := decodeRecords(b)
	want := map[string]Record{"db": {Epoch: 7, Value: Value{Primary: "a", Fenced: "b,c", Since: 6, Paused: true}}}
	if err != nil || !reflect.DeepEqual(recs, want) {
		t.Fatalf("got %+v, %v; want %+v", recs, err, want)
	}
}

// A peer with a format-5 peer among its own gossips each view twice, in
// format 6 and in 5, under one sequence number. Whichever copy comes
// first, the format-6 one is what a format-6 proxy keeps: the other
// lacks positions (format 5 reads them as unknown).
func TestObservationKeepsTheRicherCopy(t *testing.T) {
	o := Observation{Up: true, Role: RoleReplica, Lag: -1, Position: 42, PositionFresh: true}
	msg := obsMsg{Service: "db", Boot: 7, Seq: 3, Entries: []obsEntry{{"b", o}}}
	b6, err := msg.encode(6)
	if err != nil {
		t.Fatal(err)
	}
	b5, err := msg.encode(5)
	if err != nil {
		t.Fatal(err)
	}
	for _, order := range [][2][]byte{{b5, b6}, {b6, b5}} {
		m := wireMachine(t, 0)
		m.peerMeta("p1", WireMeta())
		m.Step("p1", order[0])
		m.Step("p1", order[1])
		got := m.svcs["db"].remote["p1"].view["b"]
		if got.Position != 42 || !got.PositionFresh {
			t.Errorf("format %d then %d: p1's view of b %+v, want position 42, fresh", order[0][1], order[1][1], got)
		}
	}
}
