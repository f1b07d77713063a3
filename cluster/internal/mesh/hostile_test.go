package mesh

import (
	"net"
	"strconv"
	"testing"

	"github.com/hashicorp/memberlist"
)

// rogue is a bare memberlist node under the test's full control, used to
// put crafted bytes on the wire through memberlist's real paths.
type rogueDelegate struct{ state []byte }

func (d *rogueDelegate) NodeMeta(int) []byte                 { return nil }
func (d *rogueDelegate) NotifyMsg([]byte)                    {}
func (d *rogueDelegate) GetBroadcasts(int, int) [][]byte     { return nil }
func (d *rogueDelegate) LocalState(bool) []byte              { return d.state }
func (d *rogueDelegate) MergeRemoteState(buf []byte, _ bool) {}

func newRogue(t *testing.T, tr *FaultyTransport, name string, key []byte, label string, state []byte) *memberlist.Memberlist {
	t.Helper()
	host, portStr, _ := net.SplitHostPort(tr.Addr())
	port, _ := strconv.Atoi(portStr)
	mc := memberlist.DefaultLocalConfig()
	mc.Name = name
	mc.Transport = tr
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	mc.Label = label
	mc.SecretKey = key
	mc.Logger = newStdLogger(testLogger())
	mc.Delegate = &rogueDelegate{state: state}
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ml.Shutdown() })
	return ml
}

func nodeOf(t *testing.T, c *cluster, name string) *memberlist.Node {
	t.Helper()
	host, portStr, _ := net.SplitHostPort(c.addr(name))
	port, _ := strconv.Atoi(portStr)
	return &memberlist.Node{Name: name, Addr: net.ParseIP(host), Port: uint16(port)}
}

func env(t *testing.T, kind byte, label, sender, hash string, payload []byte) []byte {
	t.Helper()
	b, err := encodeEnvelope(nil, kind, label, sender, 42, hash, payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every kind of bad envelope that gets through memberlist (right key and
// label) is dropped and counted under its reason; none reaches the handler.
func TestHostileEnvelopesDroppedAndCounted(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.start("n1")
	n1 := c.meshes["n1"]
	rogueTr, err := c.faults.Transport("intruder", "127.0.0.1:0", testLogger())
	if err != nil {
		t.Fatal(err)
	}
	rogue := newRogue(t, rogueTr, "intruder", testKey, testLabel, nil)
	to := nodeOf(t, c, "n1")

	good := env(t, kindMessage, testLabel, "n2", testHash, []byte("ok"))
	versioned := append([]byte(nil), good...)
	versioned[0] = 2
	cases := []struct {
		name   string
		buf    []byte
		reason func(Drops) uint64
	}{
		{"short", []byte{envelopeVersion}, func(d Drops) uint64 { return d.Garbage }},
		{"truncated", good[:len(good)-1], func(d Drops) uint64 { return d.Garbage }},
		{"trailing bytes", append(append([]byte(nil), good...), 0), func(d Drops) uint64 { return d.Garbage }},
		{"meta as message", env(t, kindMeta, testLabel, "n2", testHash, nil), func(d Drops) uint64 { return d.Garbage }},
		{"state as message", env(t, kindState, testLabel, "n2", testHash, nil), func(d Drops) uint64 { return d.Garbage }},
		{"unknown version", versioned, func(d Drops) uint64 { return d.Version }},
		{"random bytes", []byte("GET / HTTP/1.1\r\n\r\n"), func(d Drops) uint64 { return d.Version }},
		{"wrong label", env(t, kindMessage, "other-cluster", "n2", testHash, []byte("x")), func(d Drops) uint64 { return d.WrongLabel }},
		{"stranger", env(t, kindMessage, testLabel, "intruder", testHash, []byte("x")), func(d Drops) uint64 { return d.Stranger }},
		{"our own name", env(t, kindMessage, testLabel, "n1", testHash, []byte("x")), func(d Drops) uint64 { return d.Stranger }},
		{"config hash", env(t, kindMessage, testLabel, "n2", "hash-2", []byte("x")), func(d Drops) uint64 { return d.ConfigHash }},
		{"too large", env(t, kindMessage, testLabel, "n2", testHash, make([]byte, MaxReliablePayload+1)), func(d Drops) uint64 { return d.TooLarge }},
	}
	for _, tc := range cases {
		before := tc.reason(n1.Stats().Dropped)
		total := n1.Stats().Dropped.Total()
		if err := rogue.SendReliable(to, tc.buf); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		waitFor(t, tc.name+" counted", func() bool { return tc.reason(n1.Stats().Dropped) == before+1 })
		if got := n1.Stats().Dropped.Total(); got != total+1 {
			t.Errorf("%s: total drops went from %d to %d, want +1", tc.name, total, got)
		}
	}
	// UDP takes the same checks.
	before := n1.Stats().Dropped.Stranger
	waitFor(t, "stranger over UDP counted", func() bool {
		if err := rogue.SendBestEffort(to, env(t, kindMessage, testLabel, "intruder", testHash, []byte("u"))); err != nil {
			t.Fatal(err)
		}
		return n1.Stats().Dropped.Stranger > before
	})
	if n := c.recs["n1"].numMsgs(); n != 0 {
		t.Fatalf("handler got %d hostile messages", n)
	}
	if n1.Stats().Received != 0 {
		t.Fatalf("received = %d, want 0", n1.Stats().Received)
	}
	// Control: a well-formed envelope on the same path is delivered (the
	// key, not the name, is the trust boundary).
	if err := rogue.SendReliable(to, good); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "well-formed envelope delivered", func() bool { return c.recs["n1"].got("n2", []byte("ok")) })
}

// A node whose name is not configured, or which claims a configured name
// from another address, never becomes a member; bad full-sync state from
// it is dropped.
func TestStrangersCannotJoin(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.start("n1")
	n1 := c.meshes["n1"]
	for _, tc := range []struct {
		name  string
		state []byte
		count func(Drops) uint64
	}{
		{"intruder", env(t, kindState, "other-cluster", "n2", testHash, []byte("s")), func(d Drops) uint64 { return d.WrongLabel }},
		{"n3", []byte{envelopeVersion, kindState, 9}, func(d Drops) uint64 { return d.Garbage }}, // n3's name, wrong port
	} {
		tr, err := c.faults.Transport(tc.name, "127.0.0.1:0", testLogger())
		if err != nil {
			t.Fatal(err)
		}
		stranger := n1.Stats().Dropped.Stranger
		bad := tc.count(n1.Stats().Dropped)
		rogue := newRogue(t, tr, tc.name, testKey, testLabel, tc.state)
		if _, err := rogue.Join([]string{"n1/" + c.addr("n1")}); err != nil {
			t.Fatalf("%s: push/pull with n1: %v", tc.name, err)
		}
		waitFor(t, tc.name+" refused", func() bool { return n1.Stats().Dropped.Stranger > stranger })
		waitFor(t, tc.name+"'s state dropped", func() bool { return tc.count(n1.Stats().Dropped) > bad })
		for _, m := range n1.ml.Members() {
			if m.Name == tc.name {
				t.Errorf("%s became a member of n1", tc.name)
			}
		}
		if s := c.state("n1", "n3"); s != StateUnknown {
			t.Errorf("n1 sees n3 as %v", s)
		}
		if c.recs["n1"].numStates() != 0 {
			t.Errorf("bad state reached the handler")
		}
	}
}

// Gossip under another key (or none, or another memberlist label) cannot
// join or deliver, even from a configured name at its configured address.
func TestWrongKeyOrLabelCannotJoinOrDeliver(t *testing.T) {
	for _, tc := range []struct {
		name  string
		key   []byte
		label string
	}{
		{"wrong key", []byte("fedcba9876543210fedcba9876543210"), testLabel},
		{"no key", nil, testLabel},
		{"wrong label", testKey, "other-cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3, nil)
			c.start("n1")
			n1, n1tr := c.meshes["n1"], c.trs["n1"]
			// The rogue takes n3's name and n3's address.
			rogue := newRogue(t, c.trs["n3"], "n3", tc.key, tc.label, nil)
			c.trs["n3"] = nil
			done := n1tr.streamsDone.Load()
			if _, err := rogue.Join([]string{"n1/" + c.addr("n1")}); err == nil {
				t.Fatal("join succeeded")
			}
			if err := rogue.SendReliable(nodeOf(t, c, "n1"), env(t, kindMessage, testLabel, "n3", testHash, []byte("x"))); err != nil {
				t.Fatal(err)
			}
			// Both streams have been handled and closed by n1's memberlist.
			waitFor(t, "n1 done with both streams", func() bool { return n1tr.streamsDone.Load() >= done+2 })
			st := n1.Stats()
			if st.Received != 0 || st.Dropped.Total() != 0 || c.recs["n1"].numMsgs() != 0 {
				t.Errorf("rogue traffic reached the envelope layer: %+v", st)
			}
			if s := c.state("n1", "n3"); s != StateUnknown {
				t.Errorf("n1 sees n3 as %v", s)
			}
		})
	}
}

func TestInsecureClusterWorks(t *testing.T) {
	c := newCluster(t, 2, func(_ string, cfg *Config) {
		cfg.SecretKey, cfg.Insecure = nil, true
	})
	c.startAll()
	waitFor(t, "both alive", c.allSee)
	if err := c.meshes["n2"].Send("n1", []byte("clear")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "clear-text message", func() bool { return c.recs["n1"].got("n2", []byte("clear")) })
}
