package mesh

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// realPair starts two meshes on their own transports (the production
// path, not FaultyTransport), logging n1's lines into logs.
func realPair(t *testing.T, logs *testenv.Buffer, every time.Duration) (n1, n2 *Mesh, rec1 *recorder) {
	t.Helper()
	var peers []Peer
	for _, n := range []string{"n1", "n2"} {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, Peer{n, fmt.Sprintf("127.0.0.1:%d", p)})
	}
	start := func(name string, logger *slog.Logger, h Handler) *Mesh {
		addr := peers[slices.IndexFunc(peers, func(p Peer) bool { return p.Name == name })].Address
		m, err := New(Config{NodeName: name, Bind: addr, Advertise: addr, Label: testLabel, Peers: peers, SecretKey: testKey, ConfigHash: testHash,
			Logger: logger, GossipInterval: 50 * time.Millisecond, ProbeInterval: 200 * time.Millisecond,
			RejoinInterval: 500 * time.Millisecond, DropLogInterval: every}, h)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	rec1 = &recorder{}
	n1 = start("n1", slog.New(slog.NewTextHandler(logs, nil)), rec1)
	n2 = start("n2", testLogger(), &recorder{})
	waitFor(t, "joined", func() bool { return len(n1.ml.Members()) == 2 && len(n2.ml.Members()) == 2 })
	return n1, n2, rec1
}

// 20,000 random datagrams a second on a node's gossip port are counted,
// summarised in the log once per interval, and do not keep its peer's
// messages out.
func TestGarbageFloodCountedLoggedOnceAndHarmless(t *testing.T) {
	logs := &testenv.Buffer{}
	const every = 500 * time.Millisecond
	n1, n2, rec1 := realPair(t, logs, every)

	c, err := net.Dial("udp", n1.peers["n1"].address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	junk := make([]byte, 64<<10)
	rand.Read(junk)
	// Half random bytes, half forged: the cluster's label (public) and
	// random bytes where the ciphertext should be.
	label := append([]byte{labelHeader, byte(len(testLabel))}, testLabel...)
	const pps, dur = 20000, 2 * time.Second
	var sent, msgs int
	start := time.Now()
	for time.Since(start) < dur {
		for want := int(time.Since(start).Seconds() * pps); sent < want; sent++ {
			off := (sent * 7919) % (len(junk) - 1400)
			p := junk[off : off+16+(sent*31)%1385]
			if sent%2 == 1 {
				p = append(label[:len(label):len(label)], p...)
			}
			c.Write(p)
		}
		if time.Since(start) > time.Duration(msgs)*10*time.Millisecond {
			if err := n2.SendBestEffort("n1", []byte(fmt.Sprintf("m%d", msgs))); err != nil {
				t.Fatal(err)
			}
			msgs++
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	waitFor(t, "drops counted", func() bool { return n1.Stats().Dropped.Total() >= uint64(sent)*9/10 })
	time.Sleep(2 * every) // the last report
	d := n1.Stats().Dropped
	got := rec1.numMsgs()
	reports := strings.Count(logs.String(), "dropped bad gossip")
	t.Logf("FIGURE %d random datagrams in %v: %d counted (garbage %d, unauthenticated %d), %d report lines, %d of %d messages delivered",
		sent, took.Round(time.Millisecond), d.Unauthenticated+d.Garbage, d.Garbage, d.Unauthenticated, reports, got, msgs)
	if lines := strings.Count(logs.String(), "\n"); lines > int(took/every)+4 {
		t.Errorf("%d log lines for %d bad datagrams:\n%s", lines, sent, logs.String())
	}
	if reports == 0 || !strings.Contains(logs.String(), "count=") {
		t.Errorf("no summary of the drops in the log:\n%s", logs.String())
	}
	if got < msgs*9/10 {
		t.Errorf("only %d of %d messages got through the flood", got, msgs)
	}
	if d.Unauthenticated == 0 || d.Garbage == 0 {
		t.Errorf("drops not told apart: %+v", d)
	}
}

// packetAuth takes what memberlist sends and refuses the rest.
func TestPacketAuth(t *testing.T) {
	a, err := newPacketAuth("lbl", testKey)
	if err != nil {
		t.Fatal(err)
	}
	labelled := func(b []byte) []byte { return append([]byte{labelHeader, 3, 'l', 'b', 'l'}, b...) }
	for _, tc := range []struct {
		name string
		p    []byte
		want dropReason
	}{
		{"empty", nil, dropGarbage},
		{"unlabelled", []byte{1, 2, 3}, dropGarbage},
		{"truncated label", []byte{labelHeader, 9, 'l'}, dropGarbage},
		{"other label", append([]byte{labelHeader, 3, 'x', 'y', 'z'}, make([]byte, 40)...), dropWrongLabel},
		{"short", labelled([]byte{1, 2}), dropUnauthenticated},
		{"bad version", labelled(append([]byte{7}, make([]byte, 40)...)), dropUnauthenticated},
		{"forged", labelled(append([]byte{1}, make([]byte, 60)...)), dropUnauthenticated},
	} {
		if got := a.check(tc.p); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	clear, _ := newPacketAuth("", nil)
	if got := clear.check([]byte{1, 2, 3}); got != dropNone {
		t.Errorf("clear text without label: %v", got)
	}
}

// memberlist's warnings and errors of one kind are logged once per
// interval; the next says how many were left out.
func TestMemberlistLinesLimited(t *testing.T) {
	logs := &testenv.Buffer{}
	l := newLimitedStdLogger(slog.New(slog.NewTextHandler(logs, nil)), 100*time.Millisecond)
	for i := range 1000 {
		l.Printf("[ERR] memberlist: failed to receive: bad %d from=127.0.0.1:%d", i, i)
		l.Printf(`[ERR] memberlist: discarding packet with unacceptable label "x%d": from=127.0.0.1:1`, i)
	}
	l.Printf("[INFO] memberlist: a line of its own")
	if n := strings.Count(logs.String(), "\n"); n != 3 {
		t.Fatalf("%d lines:\n%s", n, logs.String())
	}
	time.Sleep(150 * time.Millisecond)
	l.Printf("[ERR] memberlist: failed to receive: again")
	if !strings.Contains(logs.String(), "similar_lines_left_out=999") {
		t.Fatalf("no count of the lines left out:\n%s", logs.String())
	}
}
