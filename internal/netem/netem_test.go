package netem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	queuedPort = 9000 // the iptables rule queues UDP to this port only
	queueNum   = 7
)

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{Loss: 1},
		{Loss: -0.1},
		{Delay: -time.Millisecond},
		{Jitter: -time.Millisecond},
	} {
		if _, err := Run(t.Context(), cfg); err == nil {
			t.Errorf("Run(%+v) = nil error, want one", cfg)
		}
	}
	if _, err := Run(t.Context(), Config{NetNS: "/nonexistent/netns"}); err == nil {
		t.Error("Run with a missing netns file succeeded")
	}
}

// TestDelay: the request hop is queued, the echo hop is not, so every round
// trip contains exactly one held packet and takes at least Delay-Jitter.
func TestDelay(t *testing.T) {
	ns := newNS(t)
	srv, cli := ns.udpPair(t)
	echo(t, srv)

	const delay, jitter, n = 50 * time.Millisecond, 10 * time.Millisecond, 50
	r := start(t, Config{Queue: queueNum, Delay: delay, Jitter: jitter, Seed: 1, NetNS: ns.path})
	if st := ns.queueState(t); st.copyMode != nfqnlCopyMeta {
		t.Errorf("kernel copy mode = %d, want %d (NFQNL_COPY_META)", st.copyMode, nfqnlCopyMeta)
	}

	var minRTT, maxRTT, sum time.Duration
	for i := range n {
		rtt := roundTrip(t, cli, uint64(i))
		if rtt < delay-jitter {
			t.Errorf("round trip %d took %v, want >= %v", i, rtt, delay-jitter)
		}
		if i == 0 || rtt < minRTT {
			minRTT = rtt
		}
		maxRTT = max(maxRTT, rtt)
		sum += rtt
	}
	t.Logf("%d round trips with delay %v jitter %v: min %v mean %v max %v", n, delay, jitter, minRTT, sum/n, maxRTT)

	// Back-to-back requests: jitter reorders them, as netem does (logged
	// only; it depends on the random draws).
	for i := range n {
		if _, err := cli.Write(binary.BigEndian.AppendUint64(nil, uint64(1000+i))); err != nil {
			t.Fatal(err)
		}
	}
	var got []uint64
	buf := make([]byte, 64)
	cli.SetReadDeadline(time.Now().Add(30 * time.Second))
	for len(got) < n {
		k, err := cli.Read(buf)
		if err != nil {
			t.Fatalf("burst: got %d of %d echoes: %v", len(got), n, err)
		}
		got = append(got, binary.BigEndian.Uint64(buf[:k]))
	}
	inversions := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			inversions++
		}
	}
	t.Logf("burst of %d: %d adjacent inversions in arrival order", n, inversions)

	st, err := r.stop(t)
	if err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if want := (Stats{Seen: 2 * n, Accepted: 2 * n}); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
	// Unbound now: --queue-bypass lets traffic through undelayed.
	roundTrip(t, cli, 1<<32)
	if st, ok := ns.queueLookup(t); ok {
		t.Errorf("queue still bound after Run returned: %+v", st)
	}
}

// TestLoss sends one-way packets through the queue with Loss 0.2 and checks
// that exactly the accepted ones arrive.
func TestLoss(t *testing.T) {
	ns := newNS(t)
	cli, received := ns.counted(t)

	const n, loss = 1000, 0.2
	r := start(t, Config{Queue: queueNum, Loss: loss, Seed: 42, NetNS: ns.path})
	for i := range n {
		if _, err := cli.Write(binary.BigEndian.AppendUint64(nil, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	// The kernel numbers queued packets 1, 2, ...: wait until all n were
	// queued and got their verdict.
	testwait.ForState(t, 30*time.Second, func() (bool, string) {
		st := ns.queueState(t)
		return st.idSeq == n && st.total == 0, fmt.Sprintf("queue state %+v", st)
	})
	st, err := r.stop(t)
	if err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if st.Seen != n || st.Dropped+st.Accepted != st.Seen || st.VerdictErrors != 0 {
		t.Fatalf("Stats = %+v, want Seen %d = Dropped + Accepted", st, n)
	}
	testwait.ForState(t, 10*time.Second, func() (bool, string) {
		return received.Load() >= int64(st.Accepted), fmt.Sprintf("received %d of %d accepted", received.Load(), st.Accepted)
	})
	if got := received.Load(); got != int64(st.Accepted) {
		t.Errorf("received %d packets, Stats.Accepted = %d", got, st.Accepted)
	}
	frac := float64(received.Load()) / n
	t.Logf("loss %v over %d packets: received %d (%.3f), Stats %+v", loss, n, received.Load(), frac, st)
	if frac < 0.70 || frac > 0.90 {
		t.Errorf("received fraction %.3f, want within [0.70, 0.90]", frac)
	}
}

// TestShutdownReleasesHeld: packets held when ctx is cancelled are accepted,
// not left in (or flushed as dropped from) the kernel queue.
func TestShutdownReleasesHeld(t *testing.T) {
	ns := newNS(t)
	cli, received := ns.counted(t)

	const n = 20
	r := start(t, Config{Queue: queueNum, Delay: time.Hour, NetNS: ns.path})
	for i := range n {
		if _, err := cli.Write(binary.BigEndian.AppendUint64(nil, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	testwait.ForState(t, 10*time.Second, func() (bool, string) {
		st := ns.queueState(t)
		return st.total == n, fmt.Sprintf("queue state %+v", st)
	})
	if got := received.Load(); got != 0 {
		t.Fatalf("%d packets passed a 1h delay", got)
	}
	st, err := r.stop(t)
	if err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if want := (Stats{Seen: n, Accepted: n}); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
	testwait.ForState(t, 10*time.Second, func() (bool, string) {
		return received.Load() == n, fmt.Sprintf("received %d of %d", received.Load(), n)
	})
}

// TestShutdownUnderLoad cancels Run while packets keep arriving: none may be
// lost, neither held ones nor those queued during the shutdown.
func TestShutdownUnderLoad(t *testing.T) {
	ns := newNS(t)
	cli, received := ns.counted(t)

	r := start(t, Config{Queue: queueNum, Delay: 2 * time.Millisecond, Jitter: time.Millisecond, NetNS: ns.path})
	var stopSending atomic.Bool
	sent := make(chan int64, 1)
	go func() {
		var n int64
		// At most 256 in flight, so neither the kernel queue nor the
		// receive buffer overflows; the sender stops by itself at 20000.
		for ; n < 20000 && !stopSending.Load(); n++ {
			for n-received.Load() > 256 && !stopSending.Load() {
				time.Sleep(100 * time.Microsecond)
			}
			if _, err := cli.Write(binary.BigEndian.AppendUint64(nil, uint64(n))); err != nil {
				break
			}
		}
		sent <- n
	}()
	testwait.ForState(t, 30*time.Second, func() (bool, string) {
		return received.Load() >= 500, fmt.Sprintf("received %d", received.Load())
	})
	st, err := r.stop(t)
	// Keep sending across the unbind, then stop.
	after := received.Load()
	testwait.ForState(t, 30*time.Second, func() (bool, string) {
		return received.Load() >= after+200, fmt.Sprintf("received %d after Run returned", received.Load()-after)
	})
	stopSending.Store(true)
	n := <-sent
	if err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if st.Dropped != 0 || st.Accepted != st.Seen || st.VerdictErrors != 0 {
		t.Errorf("Stats = %+v, want every seen packet accepted", st)
	}
	testwait.ForState(t, 10*time.Second, func() (bool, string) {
		return received.Load() == n, fmt.Sprintf("received %d of %d sent", received.Load(), n)
	})
	t.Logf("sent %d, received all; Run saw %d before it was cancelled", n, st.Seen)
}

// TestQueueBusy: a second Run on a bound queue fails instead of hanging (the
// kernel answers EPERM: the queue belongs to another netlink port).
func TestQueueBusy(t *testing.T) {
	ns := newNS(t)
	r := start(t, Config{Queue: queueNum, NetNS: ns.path})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := Run(ctx, Config{Queue: queueNum, NetNS: ns.path})
	if ctx.Err() != nil || !errors.Is(err, unix.EPERM) {
		t.Errorf("second Run on queue %d = %v, want EPERM", queueNum, err)
	}
	if _, err := r.stop(t); err != nil {
		t.Errorf("first Run = %v", err)
	}
}

// running is a Run in progress.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	st     Stats
	err    error
}

// start runs Run in the background and waits until the queue is bound.
func start(t *testing.T, cfg Config) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	ready := make(chan struct{})
	cfg.Ready = func() { close(ready) }
	go func() {
		defer close(r.done)
		r.st, r.err = Run(ctx, cfg)
	}()
	t.Cleanup(func() { cancel(); <-r.done })
	select {
	case <-ready:
	case <-r.done:
		t.Fatalf("Run returned before binding: %v", r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not bind the queue within 30s")
	}
	return r
}

// stop cancels Run and returns its result.
func (r *running) stop(t *testing.T) (Stats, error) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of cancel")
	}
	return r.st, r.err
}

// netNS is a fresh network namespace with lo up and an NFQUEUE rule for UDP
// to queuedPort.
type netNS struct {
	name, path string
}

var nsCount atomic.Int32

func newNS(t *testing.T) *netNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and iptables rules")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2/iptables) to build the test namespace: %v", tool, err)
		}
	}
	if _, err := os.Stat("/proc/net/netfilter/nfnetlink_queue"); err != nil {
		t.Skipf("kernel has no nfnetlink_queue (NFQUEUE), which netem relies on: %v", err)
	}
	ns := &netNS{name: fmt.Sprintf("qp-netem-%d-%d", os.Getpid(), nsCount.Add(1))}
	ns.path = filepath.Join("/var/run/netns", ns.name)
	cmd(t, "ip", "netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	cmd(t, "ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
	cmd(t, "ip", "netns", "exec", ns.name, "iptables", "-A", "INPUT", "-i", "lo", "-p", "udp",
		"--dport", strconv.Itoa(queuedPort), "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queueNum), "--queue-bypass")
	return ns
}

// udpPair opens, inside the namespace, a server on the queued port and a
// client connected to it.
func (ns *netNS) udpPair(t *testing.T) (srv, cli *net.UDPConn) {
	t.Helper()
	ns.do(t, func() (err error) {
		if srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: queuedPort}); err != nil {
			return err
		}
		cli, err = net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
		return err
	})
	t.Cleanup(func() { cli.Close() })
	return srv, cli
}

// counted is a udpPair whose server counts what it receives, with a
// receive buffer large enough not to add loss of its own.
func (ns *netNS) counted(t *testing.T) (*net.UDPConn, *atomic.Int64) {
	t.Helper()
	srv, cli := ns.udpPair(t)
	forceRcvBuf(t, srv, 4<<20)
	received := new(atomic.Int64)
	count(t, srv, received)
	return cli, received
}

// do runs fn on a thread inside the namespace, so sockets it creates live
// there. The thread stays locked and is discarded rather than switched back.
func (ns *netNS) do(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(ns.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.path, err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// queueStat is a line of /proc/net/netfilter/nfnetlink_queue.
type queueStat struct {
	portID, total, copyMode, dropped, userDropped, idSeq uint64
}

func (ns *netNS) queueLookup(t *testing.T) (queueStat, bool) {
	t.Helper()
	out := cmd(t, "ip", "netns", "exec", ns.name, "cat", "/proc/net/netfilter/nfnetlink_queue")
	for line := range strings.Lines(out) {
		// queue_num portid queue_total copy_mode copy_range queue_dropped
		// queue_user_dropped id_sequence 1
		f := strings.Fields(line)
		if len(f) < 8 || f[0] != strconv.Itoa(queueNum) {
			continue
		}
		var v [8]uint64
		for i := range v {
			v[i], _ = strconv.ParseUint(f[i], 10, 64)
		}
		return queueStat{portID: v[1], total: v[2], copyMode: v[3], dropped: v[5], userDropped: v[6], idSeq: v[7]}, true
	}
	return queueStat{}, false
}

func (ns *netNS) queueState(t *testing.T) queueStat {
	t.Helper()
	st, ok := ns.queueLookup(t)
	if !ok {
		t.Fatalf("queue %d not bound in %s", queueNum, ns.name)
	}
	if st.dropped != 0 || st.userDropped != 0 {
		t.Errorf("kernel dropped queued packets itself: %+v", st)
	}
	return st
}

func cmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// echo serves UDP echo on c until the test ends.
func echo(t *testing.T, c *net.UDPConn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
}

// count counts datagrams arriving on c until the test ends.
func count(t *testing.T, c *net.UDPConn, n *atomic.Int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
}

// roundTrip sends seq to the echo server and waits for it to come back.
func roundTrip(t *testing.T, c *net.UDPConn, seq uint64) time.Duration {
	t.Helper()
	begin := time.Now()
	if _, err := c.Write(binary.BigEndian.AppendUint64(nil, seq)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("round trip %d: %v", seq, err)
		}
		if n == 8 && binary.BigEndian.Uint64(buf) == seq {
			return time.Since(begin)
		}
	}
}

func forceRcvBuf(t *testing.T, c *net.UDPConn, size int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	}); err != nil || serr != nil {
		t.Fatalf("SO_RCVBUFFORCE: %v %v", err, serr)
	}
}
