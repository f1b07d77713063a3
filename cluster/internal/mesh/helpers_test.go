package mesh

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

const (
	testLabel = "qp-test"
	testHash  = "hash-1"
	waitLimit = 30 * time.Second
)

func testLogger() *slog.Logger {
	if os.Getenv("MESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type received struct {
	from string
	msg  []byte
}

type peerChange struct {
	name  string
	alive bool
}

// recorder is a Handler that records everything.
type recorder struct {
	mu      sync.Mutex
	msgs    []received
	changes []peerChange
	states  [][]byte
	local   []byte
	metas   map[string][]string // every meta each peer was seen with, in order
}

func (r *recorder) OnPeerMeta(name string, meta []byte) {
	r.mu.Lock()
	if r.metas == nil {
		r.metas = map[string][]string{}
	}
	r.metas[name] = append(r.metas[name], string(meta))
	r.mu.Unlock()
}

// metaOf is the last meta seen of peer, and whether any was.
func (r *recorder) metaOf(peer string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ms := r.metas[peer]
	if len(ms) == 0 {
		return "", false
	}
	return ms[len(ms)-1], true
}

func (r *recorder) OnMessage(from string, msg []byte) bool {
	r.mu.Lock()
	r.msgs = append(r.msgs, received{from, append([]byte(nil), msg...)})
	r.mu.Unlock()
	return true
}

func (r *recorder) OnPeerChange(name string, alive bool) {
	r.mu.Lock()
	r.changes = append(r.changes, peerChange{name, alive})
	r.mu.Unlock()
}

func (r *recorder) LocalState() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.local
}

func (r *recorder) MergeRemoteState(buf []byte) bool {
	r.mu.Lock()
	r.states = append(r.states, append([]byte(nil), buf...))
	r.mu.Unlock()
	return true
}

func (r *recorder) got(from string, msg []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m.from == from && bytes.Equal(m.msg, msg) {
			return true
		}
	}
	return false
}

func (r *recorder) numMsgs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) numStates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

func (r *recorder) changesOf(name string) []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []bool
	for _, c := range r.changes {
		if c.name == name {
			out = append(out, c.alive)
		}
	}
	return out
}

func (r *recorder) gotState(st []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.states {
		if bytes.Equal(s, st) {
			return true
		}
	}
	return false
}

// cluster is n in-process nodes on loopback, each with a FaultyTransport.
type cluster struct {
	t      *testing.T
	faults *Faults
	peers  []Peer
	cfgs   map[string]Config
	meshes map[string]*Mesh
	recs   map[string]*recorder
	trs    map[string]*FaultyTransport
}

// newCluster binds n transports and builds their configs; start nodes
// with start. mod may change each config.
func newCluster(t *testing.T, n int, mod func(name string, c *Config)) *cluster {
	t.Helper()
	c := &cluster{
		t: t, faults: NewFaults(),
		cfgs: map[string]Config{}, meshes: map[string]*Mesh{}, recs: map[string]*recorder{}, trs: map[string]*FaultyTransport{},
	}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%d", i)
		tr, err := c.faults.Transport(name, "127.0.0.1:0", testLogger())
		if err != nil {
			t.Fatal(err)
		}
		c.trs[name] = tr
		c.peers = append(c.peers, Peer{Name: name, Address: tr.Addr()})
	}
	for _, p := range c.peers {
		cfg := Config{
			NodeName:       p.Name,
			Advertise:      p.Address,
			Label:          testLabel,
			Peers:          c.peers,
			SecretKey:      testKey,
			ConfigHash:     testHash,
			Logger:         testLogger(),
			GossipInterval: 50 * time.Millisecond,
			ProbeInterval:  200 * time.Millisecond,
			RejoinInterval: 500 * time.Millisecond,
		}
		if mod != nil {
			mod(p.Name, &cfg)
		}
		c.cfgs[p.Name] = cfg
	}
	t.Cleanup(c.closeAll)
	return c
}

func (c *cluster) start(names ...string) {
	c.t.Helper()
	for _, name := range names {
		cfg := c.cfgs[name]
		if c.trs[name] == nil {
			tr, err := c.faults.Transport(name, c.addr(name), testLogger())
			if err != nil {
				c.t.Fatal(err)
			}
			c.trs[name] = tr
		}
		cfg.Transport = c.trs[name]
		rec := &recorder{local: []byte("state of " + name)}
		m, err := New(cfg, rec)
		if err != nil {
			c.t.Fatal(err)
		}
		c.meshes[name], c.recs[name] = m, rec
	}
}

func (c *cluster) startAll() {
	c.t.Helper()
	for _, p := range c.peers {
		c.start(p.Name)
	}
}

func (c *cluster) addr(name string) string {
	for _, p := range c.peers {
		if p.Name == name {
			return p.Address
		}
	}
	c.t.Fatalf("no peer %q", name)
	return ""
}

// stop closes a node; its transport is rebound on the next start.
func (c *cluster) stop(name string) {
	c.t.Helper()
	if m := c.meshes[name]; m != nil {
		_ = m.Close()
	}
	delete(c.meshes, name)
	c.trs[name] = nil
}

// crash stops a node without leaving, as a killed process would.
func (c *cluster) crash(name string) {
	c.t.Helper()
	m := c.meshes[name]
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		_ = m.ml.Shutdown()
		close(m.stop)
		m.wg.Wait()
	})
	delete(c.meshes, name)
	c.trs[name] = nil
}

func (c *cluster) closeAll() {
	for name, m := range c.meshes {
		if err := m.Close(); err != nil {
			c.t.Logf("close %s: %v", name, err)
		}
	}
	for _, tr := range c.trs {
		if tr != nil {
			_ = tr.Shutdown() // transports never handed to a Mesh
		}
	}
}

func (c *cluster) state(of, peer string) State {
	for _, ms := range c.meshes[of].Members() {
		if ms.Name == peer {
			return ms.State
		}
	}
	c.t.Fatalf("%s has no member %s", of, peer)
	return StateUnknown
}

func (c *cluster) member(of, peer string) MemberState {
	for _, ms := range c.meshes[of].Members() {
		if ms.Name == peer {
			return ms
		}
	}
	c.t.Fatalf("%s has no member %s", of, peer)
	return MemberState{}
}

// allSee reports whether every running node sees every other running node
// alive (suspect counts as alive here: memberlist still lists it).
func (c *cluster) allSee() bool {
	for a := range c.meshes {
		for b := range c.meshes {
			if a == b {
				continue
			}
			if s := c.state(a, b); s != StateAlive && s != StateSuspect {
				return false
			}
		}
	}
	return true
}
