package mesh

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestThreeNodesJoinAndSeeEachOther(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.startAll()
	waitFor(t, "all nodes alive everywhere", c.allSee)
	for _, a := range []string{"n1", "n2", "n3"} {
		for _, b := range []string{"n1", "n2", "n3"} {
			ms := c.member(a, b)
			if ms.BootID == 0 || !ms.ConfigHashMatch || ms.Address != c.addr(b) {
				t.Errorf("%s's view of %s: %+v", a, b, ms)
			}
			if a == b {
				if !ms.Self || ms.BootID != c.meshes[a].BootID() {
					t.Errorf("%s's view of itself: %+v", a, ms)
				}
				continue
			}
			if ms.BootID != c.meshes[b].BootID() {
				t.Errorf("%s has boot id %d for %s, want %d", a, ms.BootID, b, c.meshes[b].BootID())
			}
			waitFor(t, a+" told "+b+" is alive", func() bool {
				ch := c.recs[a].changesOf(b)
				return len(ch) > 0 && ch[0] && ch[len(ch)-1]
			})
		}
	}
	// The joiner's full sync reached the handler.
	waitFor(t, "push/pull state merged", func() bool {
		return c.recs["n1"].gotState([]byte("state of n2")) || c.recs["n1"].gotState([]byte("state of n3"))
	})
}

func TestSendSendBestEffortBroadcastDeliver(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.startAll()
	waitFor(t, "all nodes alive everywhere", c.allSee)
	n1 := c.meshes["n1"]

	if err := n1.Send("n2", []byte("reliable")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reliable message at n2", func() bool { return c.recs["n2"].got("n1", []byte("reliable")) })

	// UDP may lose a packet even on loopback: resend until one arrives.
	waitFor(t, "best-effort message at n3", func() bool {
		if err := n1.SendBestEffort("n3", []byte("udp")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		return c.recs["n3"].got("n1", []byte("udp"))
	})

	if err := n1.Broadcast("", []byte("to all")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "broadcast at n2 and n3", func() bool {
		return c.recs["n2"].got("n1", []byte("to all")) && c.recs["n3"].got("n1", []byte("to all"))
	})

	if err := n1.Send("n1", []byte("self")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "message to self", func() bool { return c.recs["n1"].got("n1", []byte("self")) })

	if err := n1.Send("nobody", []byte("x")); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("send to unknown peer: %v, want ErrUnknownPeer", err)
	}
	if err := n1.Send("n2", make([]byte, MaxReliablePayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized send: %v, want ErrTooLarge", err)
	}
	big := make([]byte, n1.MaxPacketPayload()+1)
	if err := n1.SendBestEffort("n2", big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized best-effort send: %v, want ErrTooLarge", err)
	}
	if err := n1.Broadcast("k", big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized broadcast: %v, want ErrTooLarge", err)
	}
	// The largest packet payload does go through.
	most := bytes.Repeat([]byte{0xAB}, n1.MaxPacketPayload())
	if err := n1.Broadcast("big", most); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "maximal broadcast at n3", func() bool { return c.recs["n3"].got("n1", most) })

	st := c.meshes["n2"].Stats()
	if st.Received < 2 || st.Dropped.Total() != 0 {
		t.Errorf("n2 stats: %+v", st)
	}
}

// A newer broadcast with the same key replaces the queued older one: v1 is
// queued and replaced before anyone can receive it, so it never arrives.
func TestNamedBroadcastReplacesQueued(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.start("n1") // alone: nobody to gossip to, so the queue holds
	n1 := c.meshes["n1"]
	for _, b := range []struct{ key, msg string }{{"backend/db1", "v1"}, {"backend/db2", "other"}, {"backend/db1", "v2"}} {
		if err := n1.Broadcast(b.key, []byte(b.msg)); err != nil {
			t.Fatal(err)
		}
	}
	if q := n1.Stats().QueuedBroadcasts; q != 2 {
		t.Fatalf("queued broadcasts = %d, want 2 (v1 replaced by v2)", q)
	}
	c.start("n2")
	rec := c.recs["n2"]
	waitFor(t, "v2 and other at n2", func() bool {
		return rec.got("n1", []byte("v2")) && rec.got("n1", []byte("other"))
	})
	if rec.got("n1", []byte("v1")) {
		t.Error("replaced broadcast v1 was delivered")
	}
}

func TestConfigHashMismatchDroppedUntilFixed(t *testing.T) {
	c := newCluster(t, 3, func(name string, cfg *Config) {
		if name == "n3" {
			cfg.ConfigHash = "hash-2"
		}
	})
	c.startAll()
	// Membership is about identity: n3 joins, and the mismatch shows.
	waitFor(t, "all nodes alive everywhere", c.allSee)
	waitFor(t, "n1 sees n3's other hash", func() bool {
		ms := c.member("n1", "n3")
		return ms.BootID != 0 && !ms.ConfigHashMatch
	})
	before := c.meshes["n1"].Stats().Dropped.ConfigHash
	if err := c.meshes["n3"].Send("n1", []byte("from another config")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "config hash drop counted", func() bool { return c.meshes["n1"].Stats().Dropped.ConfigHash > before })
	if c.recs["n1"].got("n3", []byte("from another config")) {
		t.Error("message with another config hash was delivered")
	}

	if err := c.meshes["n3"].SetConfigHash(testHash); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1 sees n3's hash match", func() bool { return c.member("n1", "n3").ConfigHashMatch })
	if err := c.meshes["n3"].Send("n1", []byte("same config")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "message after the fix", func() bool { return c.recs["n1"].got("n3", []byte("same config")) })
}

func TestRestartWithNewBootIDRejoins(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.startAll()
	waitFor(t, "all nodes alive everywhere", c.allSee)
	oldBoot := c.meshes["n3"].BootID()

	// Clean stop: n3 leaves, the others see it go.
	c.stop("n3")
	waitFor(t, "n1 sees n3 dead", func() bool { return c.state("n1", "n3") == StateDead })
	waitFor(t, "n1 told n3 is down", func() bool {
		ch := c.recs["n1"].changesOf("n3")
		return len(ch) >= 2 && !ch[len(ch)-1]
	})
	downs := len(c.recs["n1"].changesOf("n3"))

	c.start("n3")
	waitFor(t, "all nodes alive again", c.allSee)
	newBoot := c.meshes["n3"].BootID()
	if newBoot == oldBoot {
		t.Fatal("restart kept the boot id")
	}
	waitFor(t, "n1 has n3's new boot id", func() bool { return c.member("n1", "n3").BootID == newBoot })
	waitFor(t, "n1 told n3 is up again", func() bool {
		ch := c.recs["n1"].changesOf("n3")
		return len(ch) > downs && ch[len(ch)-1]
	})
	if err := c.meshes["n3"].Send("n1", []byte("back")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "message from restarted n3", func() bool { return c.recs["n1"].got("n3", []byte("back")) })
}

// A node killed and restarted before anyone declares it dead is still
// noticed, by its new boot id, as down then up.
func TestFastRestartSeenByBootID(t *testing.T) {
	c := newCluster(t, 3, func(_ string, cfg *Config) {
		// Slow failure detection so the restart beats it.
		cfg.ProbeInterval = 2 * time.Second
	})
	c.startAll()
	waitFor(t, "all nodes alive everywhere", c.allSee)
	c.crash("n3")
	c.start("n3")
	newBoot := c.meshes["n3"].BootID()
	waitFor(t, "n1 has n3's new boot id", func() bool { return c.member("n1", "n3").BootID == newBoot })
	waitFor(t, "n1 told n3 went down and up", func() bool {
		ch := c.recs["n1"].changesOf("n3")
		return len(ch) >= 3 && slices.Equal(ch[len(ch)-2:], []bool{false, true})
	})
	waitFor(t, "all nodes alive everywhere", c.allSee)
}

// A partition longer than memberlist's dead-node handling (dead, then no
// more gossip to the dead) heals only through the rejoin loop.
func TestLongPartitionHealsByRejoin(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.startAll()
	waitFor(t, "all nodes alive everywhere", c.allSee)

	c.faults.Partition([]string{"n1", "n2"}, []string{"n3"})
	waitFor(t, "both sides see the other dead", func() bool {
		return c.state("n1", "n3") == StateDead && c.state("n2", "n3") == StateDead &&
			c.state("n3", "n1") == StateDead && c.state("n3", "n2") == StateDead
	})
	if !c.meshes["n1"].Members()[0].Self {
		t.Fatal("members not in configuration order")
	}
	if err := c.meshes["n1"].Send("n3", []byte("across")); err == nil {
		t.Error("reliable send across a partition succeeded")
	}
	// Hold the partition past GossipToTheDeadTime (30 probe intervals):
	// memberlist has then reaped the dead nodes and stopped gossiping to
	// them; only a fresh join can reconnect the halves.
	hold := 30*c.cfgs["n1"].ProbeInterval + time.Second
	joinsBefore := c.meshes["n3"].joinAttempts.Load()
	time.Sleep(hold)
	if c.meshes["n3"].joinAttempts.Load() == joinsBefore {
		t.Error("n3's rejoin loop made no attempt during the partition")
	}
	c.faults.Heal()
	waitFor(t, "partition healed", c.allSee)
	if err := c.meshes["n3"].Send("n1", []byte("healed")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "message after heal", func() bool { return c.recs["n1"].got("n3", []byte("healed")) })
}

func TestCloseIsIdempotentAndStops(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.startAll()
	waitFor(t, "both alive", c.allSee)
	m := c.meshes["n1"]
	err1 := m.Close()
	err2 := m.Close()
	if !errors.Is(err2, err1) && fmt.Sprint(err1) != fmt.Sprint(err2) {
		t.Errorf("second Close = %v, first = %v", err2, err1)
	}
	if err := m.Send("n2", []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("send after close: %v, want ErrClosed", err)
	}
	if err := m.Broadcast("k", []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("broadcast after close: %v, want ErrClosed", err)
	}
	waitFor(t, "n2 sees n1 leave", func() bool { return c.state("n2", "n1") == StateDead })
	delete(c.meshes, "n1")

	// Close with every peer unreachable finishes too.
	c.faults.Partition([]string{"n2"}, []string{"n1"})
	if err := c.meshes["n2"].Close(); err != nil {
		t.Logf("close while alone: %v", err)
	}
	delete(c.meshes, "n2")
}

// On a lossy link (half of all packets and dials lost) membership still
// converges and every reliable send arrives once the sender retries.
func TestLossyLinkRetriedSendsArrive(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.faults.SetLoss("n1", "n2", 0.5)
	c.startAll()
	waitFor(t, "both alive despite loss", c.allSee)
	failures := 0
	for i := range 20 {
		msg := []byte(fmt.Sprintf("lossy %d", i))
		waitFor(t, "send accepted", func() bool {
			if err := c.meshes["n1"].Send("n2", msg); err != nil {
				if !errors.Is(err, ErrPartitioned) {
					t.Fatalf("send: %v", err)
				}
				failures++
				return false
			}
			return true
		})
		waitFor(t, string(msg)+" at n2", func() bool { return c.recs["n2"].got("n1", msg) })
	}
	// 0 failures in 20 tries at 50% has probability 1e-6.
	if failures == 0 || c.trs["n1"].Lost() == 0 {
		t.Errorf("nothing was lost on a 50%% lossy link (failures %d)", failures)
	}
}

// Each node's Config.Meta reaches the others' MetaHandler at the join and
// again when it changes across a restart; a node without one (an older
// build) is seen with an empty meta and admitted all the same.
func TestPeerMetaReachesHandler(t *testing.T) {
	meta := map[string]string{"n1": "range 5..6", "n2": ""}
	c := newCluster(t, 3, func(name string, cfg *Config) {
		if m := meta[name]; m != "" {
			cfg.Meta = []byte(m)
		}
		if name == "n3" {
			cfg.Meta = []byte("range 6..7")
		}
	})
	c.startAll()
	waitFor(t, "all nodes alive everywhere", c.allSee)
	for _, want := range []struct{ of, peer, meta string }{
		{"n2", "n1", "range 5..6"}, {"n1", "n2", ""}, {"n1", "n3", "range 6..7"}, {"n3", "n2", ""},
	} {
		waitFor(t, want.of+" has "+want.peer+"'s meta", func() bool {
			m, ok := c.recs[want.of].metaOf(want.peer)
			return ok && m == want.meta
		})
	}
	c.stop("n3")
	cfg := c.cfgs["n3"]
	cfg.Meta = []byte("range 7..8")
	c.cfgs["n3"] = cfg
	c.start("n3")
	waitFor(t, "n1 has n3's new meta", func() bool {
		m, _ := c.recs["n1"].metaOf("n3")
		return m == "range 7..8"
	})

	// The meta counts against memberlist's limit.
	bad := c.cfgs["n1"]
	bad.Meta = make([]byte, maxMetaLen)
	bad.Transport = nil
	bad.Bind = "127.0.0.1:0"
	if _, err := New(bad, &recorder{}); err == nil || !strings.Contains(err.Error(), "meta") {
		t.Fatalf("an oversized meta: %v", err)
	}
}
