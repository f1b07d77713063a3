package mesh

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// The timers package config uses by default (memberlist's LAN values and
// a rejoin every 10s).
var (
	lanGossip = memberlist.DefaultLANConfig().GossipInterval
	lanProbe  = memberlist.DefaultLANConfig().ProbeInterval
)

const lanRejoin = 10 * time.Second

// TestMeasureDefaults reports, with the default timers, how long a crashed
// node takes to be seen dead and how long a partition takes to heal once
// the links are back. It measures, it does not judge: run with
// MESH_MEASURE=1 (it takes about a minute per trial).
func TestMeasureDefaults(t *testing.T) {
	if os.Getenv("MESH_MEASURE") == "" {
		t.Skip("measurement only: set MESH_MEASURE=1 to run")
	}
	trials := 3
	var detect, heal []time.Duration
	for range trials {
		c := newCluster(t, 3, func(_ string, cfg *Config) {
			cfg.GossipInterval, cfg.ProbeInterval, cfg.RejoinInterval = lanGossip, lanProbe, lanRejoin
		})
		c.startAll()
		waitFor(t, "all alive", c.allSee)

		start := time.Now()
		c.crash("n3")
		waitFor(t, "n3 dead at n1 and n2", func() bool {
			return c.state("n1", "n3") == StateDead && c.state("n2", "n3") == StateDead
		})
		detect = append(detect, time.Since(start))

		c.start("n3")
		waitFor(t, "all alive", c.allSee)
		c.faults.Partition([]string{"n1", "n2"}, []string{"n3"})
		waitFor(t, "both sides see the other dead", func() bool {
			return c.state("n1", "n3") == StateDead && c.state("n3", "n1") == StateDead
		})
		time.Sleep(31 * lanProbe) // past GossipToTheDeadTime
		c.faults.Heal()
		start = time.Now()
		waitFor(t, "healed", c.allSee)
		heal = append(heal, time.Since(start))
		c.closeAll()
	}
	slices.Sort(detect)
	slices.Sort(heal)
	t.Logf("defaults (probe %v, gossip %v, rejoin %v), %d trials: crash->dead %v; heal after partition %v",
		lanProbe, lanGossip, lanRejoin, trials, fmt.Sprint(detect), fmt.Sprint(heal))
}

// BenchmarkSendReliable is one encrypted reliable message, n1 to n2's
// handler, over loopback.
func BenchmarkSendReliable(b *testing.B) {
	benchDelivery(b, func(m *Mesh, msg []byte) error { return m.Send("n2", msg) })
}

// BenchmarkBroadcast is one broadcast, from queueing to n2's handler.
func BenchmarkBroadcast(b *testing.B) {
	benchDelivery(b, func(m *Mesh, msg []byte) error { return m.Broadcast("", msg) })
}

func benchDelivery(b *testing.B, send func(*Mesh, []byte) error) {
	f := NewFaults()
	var peers []Peer
	trs := map[string]*FaultyTransport{}
	for _, n := range []string{"n1", "n2"} {
		tr, err := f.Transport(n, "127.0.0.1:0", testLogger())
		if err != nil {
			b.Fatal(err)
		}
		trs[n] = tr
		peers = append(peers, Peer{n, tr.Addr()})
	}
	got := make(chan struct{}, 1)
	meshes := map[string]*Mesh{}
	for _, n := range []string{"n1", "n2"} {
		var h Handler = &recorder{}
		if n == "n2" {
			h = chanHandler(got)
		}
		m, err := New(Config{NodeName: n, Label: testLabel, Peers: peers, SecretKey: testKey, ConfigHash: testHash,
			Logger: testLogger(), Transport: trs[n], Advertise: trs[n].Addr(), GossipInterval: 10 * time.Millisecond,
			ProbeInterval: lanProbe, RejoinInterval: lanRejoin}, h)
		if err != nil {
			b.Fatal(err)
		}
		meshes[n] = m
		defer m.Close()
	}
	deadline := time.Now().Add(waitLimit)
	for len(meshes["n1"].ml.Members()) < 2 || len(meshes["n2"].ml.Members()) < 2 {
		if time.Now().After(deadline) {
			b.Fatal("no join")
		}
		time.Sleep(10 * time.Millisecond)
	}
	msg := make([]byte, 200)
	b.ResetTimer()
	for range b.N {
		if err := send(meshes["n1"], msg); err != nil {
			b.Fatal(err)
		}
		<-got
	}
}

type chanHandler chan struct{}

func (c chanHandler) OnMessage(string, []byte) bool {
	select {
	case c <- struct{}{}:
	default:
	}
	return true
}
func (c chanHandler) OnPeerChange(string, bool)    {}
func (c chanHandler) LocalState() []byte           { return nil }
func (c chanHandler) MergeRemoteState([]byte) bool { return true }
