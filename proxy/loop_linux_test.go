//go:build linux

package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
	"golang.org/x/sys/unix"
)

// TestSlowReaderBounded: a client that never reads while its backend
// floods. The proxy keeps at most one buffer for that direction and stops
// reading the backend, so the backend's writes stall and the proxy's heap
// does not grow with the flood.
func TestSlowReaderBounded(t *testing.T) {
	const flood = 256 << 20
	var written atomic.Int64
	be := startServer(t, "flood", func(c *net.TCPConn) {
		chunk := make([]byte, 256<<10)
		for written.Load() < flood {
			n, err := c.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	p := newProxy(t, Options{Logger: slog.New(slog.DiscardHandler)}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	before := heapInUse()
	c := dial(t, p.addrOf(t, "svc"))
	_ = c.SetReadBuffer(64 << 10)
	// Stalled: the count stays put across many polls once the socket
	// buffers on both sides are full.
	var last int64
	same := 0
	testwait.For(t, "the backend's writes to stall", waitLimit, func() bool {
		n := written.Load()
		if n == last && n > 0 {
			same++
		} else {
			same = 0
		}
		last = n
		return same >= 50 // 50 polls, 2ms apart
	})
	if last >= flood {
		t.Fatalf("the backend wrote all %d bytes to a client that reads nothing", last)
	}
	grew := int64(heapInUse()) - int64(before)
	t.Logf("backend stalled after %d KiB; proxy heap grew %d KiB; %d bytes forwarded", last>>10, grew>>10, p.statusOf("svc").backend("a").BytesOut)
	if grew > 4<<20 {
		t.Fatalf("heap grew %d KiB while one client did not read", grew>>10)
	}
	// Reading again drains what was kept and the flow resumes.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, last+1<<20)); err != nil {
		t.Fatalf("reading after the stall: %v", err)
	}
}

// TestSpliceBulk: a bulk stream moves to splice and comes back exact; once
// it is idle the session holds no pipe (two fds), the pipes back in the
// loop's pool.
func TestSpliceBulk(t *testing.T) {
	be := startEcho(t)
	p := newProxy(t, Options{}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	c := dial(t, p.addrOf(t, "svc"))
	payload := make([]byte, 32<<20)
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	go func() { _, _ = c.Write(payload) }()
	got := make([]byte, len(payload))
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(payload) {
		t.Fatal("spliced bytes differ")
	}
	var spliced uint64
	for _, l := range p.loops {
		spliced += l.spliced.Load()
	}
	if spliced == 0 {
		t.Fatal("32 MiB each way and no direction moved to splice")
	}
	waitParked(t, p, 2)
	testwait.For(t, "pipes back in the pool", waitLimit, func() bool {
		var lent int64
		for _, l := range p.loops {
			lent += l.lent.Load()
		}
		return lent == 0
	})
	if b := p.statusOf("svc").backend("a"); b.BytesIn != uint64(len(payload)) || b.BytesOut != uint64(len(payload)) {
		t.Fatalf("bytes in/out %d/%d", b.BytesIn, b.BytesOut)
	}
	roundTrip(t, c, "still flowing")
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestRandomCloses: many concurrent sessions through two loops, each closed
// at a random point by the client (FIN or reset) or by the backend, with
// data in flight. Every session is released, nothing stays parked, no fd
// is left behind (goroutines: goleak).
func TestRandomCloses(t *testing.T) {
	// The runtime's poller fds appear on first network use.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = ln.Close()
	// Earlier tests' echo servers leave splice pipes that finalizers close
	// (see TestNoFDLeakUnderFaults): collect them first, and accept fewer.
	runtime.GC()
	fdsBefore := countFDs(t)
	t.Run("sessions", func(t *testing.T) {
		echoBE := startEcho(t)
		var cut atomic.Int64
		cutter := startServer(t, "cut", func(c *net.TCPConn) {
			rng := rand.New(rand.NewPCG(uint64(cut.Add(1)), 3))
			buf := make([]byte, 1+rng.IntN(64<<10))
			n, _ := c.Read(buf)
			_, _ = c.Write(buf[:n/2])
			if rng.IntN(2) == 0 {
				_ = c.SetLinger(0)
			}
		})
		p := newProxy(t, Options{Loops: 2, Logger: slog.New(slog.DiscardHandler)},
			ServiceConfig{Name: "svc", Listen: "127.0.0.1:0", Mode: ActiveActive,
				Backends: []Backend{{Name: "echo", Address: echoBE.addr()}, {Name: "cut", Address: cutter.addr()}}})
		p.SetHealth("svc", "echo", upAny)
		p.SetHealth("svc", "cut", upAny)
		addr := p.addrOf(t, "svc")
		const clients, each = 16, 25
		var wg sync.WaitGroup
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), 11))
				for j := 0; j < each; j++ {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						t.Error(err)
						return
					}
					msg := make([]byte, 1+rng.IntN(256<<10))
					go func() { _, _ = c.Write(msg) }()
					_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
					_, _ = io.ReadFull(c, make([]byte, rng.IntN(len(msg)+1)))
					switch rng.IntN(3) {
					case 0:
						_ = c.(*net.TCPConn).SetLinger(0)
					case 1:
						_ = c.(*net.TCPConn).CloseWrite()
						_, _ = io.Copy(io.Discard, c)
					}
					_ = c.Close()
				}
			}()
		}
		wg.Wait()
		testwait.For(t, "every session released", waitLimit, func() bool {
			st := p.statusOf("svc")
			return st.Active == 0 && st.backend("echo").Active == 0 && st.backend("cut").Active == 0
		})
		waitParked(t, p, 0)
		if st := p.statusOf("svc"); st.Accepted != clients*each {
			t.Fatalf("accepted %d, want %d", st.Accepted, clients*each)
		}
		_ = p.Close()
	})
	testwait.For(t, "fds back to the start", waitLimit, func() bool {
		runtime.GC()
		return countFDs(t) <= fdsBefore
	})
}

// floodHelperEnv makes the test binary run floodHelper instead of tests.
const floodHelperEnv = "QP_PROXY_FLOOD_HELPER"

func init() {
	if os.Getenv(floodHelperEnv) != "" {
		floodHelper()
		os.Exit(0)
	}
}

// floodHelper runs a proxy with a tiny open-file limit in its own process
// (the limit is process-wide), prints its address, and serves until stdin
// closes.
func floodHelper() {
	n, _ := strconv.Atoi(os.Getenv(floodHelperEnv))
	rl := syscall.Rlimit{Cur: uint64(n), Max: uint64(n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Println("error", err)
		return
	}
	p := New(Options{Loops: 2, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	defer p.Close()
	if err := p.Apply([]ServiceConfig{oneBackend("svc", os.Getenv("QP_FLOOD_BACKEND"))}); err != nil {
		fmt.Println("error", err)
		return
	}
	p.SetHealth("svc", "a", upAny)
	fmt.Println(p.statusOf("svc").Addr)
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// TestLowFDLimitFlood: a proxy whose open-file limit is far below the
// connections it is offered refuses the excess cleanly (the client sees a
// close at once, not a hang), does not spin while out of fds, and serves
// again as soon as fds free up.
func TestLowFDLimitFlood(t *testing.T) {
	be := startEcho(t)
	_, sc, cmd := startHelper(t, floodHelperEnv+"=48", "QP_FLOOD_BACKEND="+be.addr())
	if !sc.Scan() {
		t.Fatalf("helper: %v", sc.Err())
	}
	addr := sc.Text()
	if strings.HasPrefix(addr, "error") {
		t.Fatal(addr)
	}

	// Fill the proxy up: sessions that work, until one is refused.
	var served []net.Conn
	refused := 0
	for i := 0; i < 60 && refused < 5; i++ {
		c := dial(t, addr)
		if echoes(c) {
			served = append(served, c)
		} else {
			refused++
			_ = c.Close()
		}
	}
	if len(served) == 0 || refused == 0 {
		t.Fatalf("served %d, refused %d: the limit did not bite", len(served), refused)
	}
	t.Logf("%d sessions served at the limit", len(served))

	// A flood while out of fds: each client gets an answer (a close, or
	// its byte echoed when fds freed by the flood itself let a session
	// through) and the proxy does not burn a core meanwhile. Waves of 100
	// go on for half a second: process CPU time is counted in 10ms ticks,
	// so one wave (a few ms) cannot tell a spin from a tick.
	cpu0 := procCPU(t, cmd.Process.Pid)
	start := time.Now()
	var hung, echoed atomic.Int64
	waves := 0
	for waves == 0 || time.Since(start) < 500*time.Millisecond {
		waves++
		var wg sync.WaitGroup
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					return // refused at connect: an answer too
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write([]byte{'x'})
				n, err := c.Read(make([]byte, 1))
				switch {
				case n == 1:
					echoed.Add(1)
				case errors.Is(err, os.ErrDeadlineExceeded):
					hung.Add(1)
				}
			}()
		}
		wg.Wait()
	}
	wall := time.Since(start)
	cpu := procCPU(t, cmd.Process.Pid) - cpu0
	t.Logf("flood of %d waves of 100 at the limit (%d served): answered in %v, proxy CPU %v", waves, echoed.Load(), wall, cpu)
	if hung.Load() > 0 {
		t.Fatalf("%d clients got no answer within 5s", hung.Load())
	}
	// A spinning accept loop would use about all of the wall time.
	if cpu > wall/2 {
		t.Fatalf("proxy used %v of CPU in %v while out of fds", cpu, wall)
	}

	// Free the fds: serving resumes.
	for _, c := range served {
		_ = c.Close()
	}
	testwait.For(t, "serving to resume", waitLimit, func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		return echoes(c)
	})
}

// echoes reports whether c echoes a byte back within a few seconds.
func echoes(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{'x'}); err != nil {
		return false
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err == nil
}

// procCPU is the user+system time of process pid.
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// TestAccessLog: with AccessLog on, each client connection ends in one
// line that says who, where to, how long, how many bytes each way and why;
// off, none.
func TestAccessLog(t *testing.T) {
	logs := &testenv.Buffer{}
	be := startEcho(t)
	p := newProxy(t, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), AccessLog: true}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	c := dial(t, p.addrOf(t, "svc"))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite() // the echo server then closes: both ends done
	_, _ = io.ReadAll(c)
	c.Close()
	testwait.For(t, "the access log line", waitLimit, func() bool { return strings.Contains(logs.String(), `msg=connection`) })
	line := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "msg=connection") {
			line = l
		}
	}
	for _, want := range []string{"service=svc", "client=" + c.LocalAddr().String(), "backend=a", "bytes_to_backend=6", "bytes_to_client=6", `why="done: both ends closed"`, "duration="} {
		if !strings.Contains(line, want) {
			t.Errorf("access log line lacks %s:\n%s", want, line)
		}
	}
	// Off, nothing is written.
	p.SetAccessLog(false)
	c2 := dial(t, p.addrOf(t, "svc"))
	testwait.For(t, "the second connection open", waitLimit, func() bool { return p.statusOf("svc").Active == 1 })
	c2.Close()
	testwait.For(t, "the second connection closed", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
	if n := strings.Count(logs.String(), "msg=connection"); n != 1 {
		t.Errorf("%d access log lines with the log off for the second connection, want 1 in all", n)
	}
}

// TestBatchedIO: many sessions exchanging messages of random sizes (some
// fill a batch slot, some several) through one loop, so that one wake-up
// finds several of them readable: their reads and writes go through
// io_uring in batches, and every byte comes back in order. Run once with
// batching and once without.
func TestBatchedIO(t *testing.T) {
	for _, off := range []bool{false, true} {
		name := map[bool]string{false: "io_uring", true: "syscalls"}[off]
		t.Run(name, func(t *testing.T) {
			be := startEcho(t)
			p := newProxy(t, Options{Loops: 1, NoIOURing: off}, oneBackend("svc", be.addr()))
			p.SetHealth("svc", "a", upAny)
			addr := p.addrOf(t, "svc")
			l := p.loops[0]
			if !off && l.batch == nil {
				t.Skip("io_uring is refused on this machine (kernel, seccomp or kernel.io_uring_disabled); the loops make one system call per read and write")
			}
			if off && l.batch != nil {
				t.Fatal("NoIOURing set, yet the loop batches")
			}
			const clients, rounds = 32, 40
			var wg sync.WaitGroup
			var total atomic.Int64
			for i := 0; i < clients; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(i), 5))
					c, err := net.Dial("tcp", addr)
					if err != nil {
						t.Error(err)
						return
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(waitLimit))
					for r := 0; r < rounds; r++ {
						msg := make([]byte, 1+rng.IntN(3*slotSize))
						for j := range msg {
							msg[j] = byte(rng.Uint32())
						}
						errc := make(chan error, 1)
						go func() { _, err := c.Write(msg); errc <- err }()
						got := make([]byte, len(msg))
						if _, err := io.ReadFull(c, got); err != nil {
							t.Errorf("client %d round %d: %v", i, r, err)
							return
						}
						if err := <-errc; err != nil {
							t.Errorf("client %d round %d: write: %v", i, r, err)
							return
						}
						if !bytes.Equal(got, msg) {
							t.Errorf("client %d round %d: %d bytes came back different", i, r, len(msg))
							return
						}
						total.Add(int64(len(msg)))
					}
				}()
			}
			wg.Wait()
			testwait.For(t, "sessions to end", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
			b := p.statusOf("svc").backend("a")
			if b.BytesIn != uint64(total.Load()) || b.BytesOut != uint64(total.Load()) {
				t.Fatalf("bytes in/out %d/%d, want %d", b.BytesIn, b.BytesOut, total.Load())
			}
			switch n := l.batched.Load(); {
			case off && n != 0:
				t.Fatalf("%d reads batched with io_uring off", n)
			case !off && n == 0:
				t.Fatal("no read was batched: 32 busy sessions on one loop never made a wake-up with two of them readable")
			default:
				t.Logf("reads batched: %d", n)
			}
		})
	}
}

// TestBatchedBackpressure: eight backends flood their clients through one
// loop while the clients do not read, so the loop's batched writes meet
// full sockets and keep what did not go; then the clients read everything
// and every byte arrives in order.
func TestBatchedBackpressure(t *testing.T) {
	const size = 16 << 20
	stream := func(seed uint64, n int) []byte {
		rng := rand.New(rand.NewPCG(seed, 9))
		b := make([]byte, n)
		for i := 0; i < n; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		return b
	}
	flood := startServer(t, "flood", func(c *net.TCPConn) {
		var seed [8]byte
		if _, err := io.ReadFull(c, seed[:]); err != nil {
			return
		}
		// Small writes, so the loop's reads stay short and batched, and a
		// batched write is the one that meets the full socket.
		data := stream(binary.BigEndian.Uint64(seed[:]), size)
		for len(data) > 0 {
			n, err := c.Write(data[:min(len(data), 3000)])
			if err != nil {
				return
			}
			data = data[n:]
		}
	})
	p := newProxy(t, Options{Loops: 1}, oneBackend("svc", flood.addr()))
	p.SetHealth("svc", "a", upAny)
	addr := p.addrOf(t, "svc")
	l := p.loops[0]
	if l.batch == nil {
		t.Skip("io_uring is refused on this machine; TestBatchedIO/syscalls covers the loops without it")
	}
	const clients = 8
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var seed [8]byte
		binary.BigEndian.PutUint64(seed[:], uint64(i+1))
		if _, err := c.Write(seed[:]); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	testwait.For(t, "every client's direction to keep bytes its client did not take", waitLimit, func() bool {
		kept := 0
		l.call(func() {
			for s := range l.sessions {
				if s.down.kept() {
					kept++
				}
			}
		})
		return kept == clients
	})
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(waitLimit))
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("client %d: %v", i, err)
			}
			if !bytes.Equal(got, stream(uint64(i+1), size)) {
				t.Errorf("client %d: %d bytes, not the %d sent", i, len(got), size)
			}
		}()
	}
	wg.Wait()
	if l.batched.Load() == 0 {
		t.Fatal("no read was batched: eight flooding backends on one loop never made a wake-up with two of them readable")
	}
}

// TestAccept4Peer: the loops' accept gives the peer's address as
// unix.Accept4 would, for IPv4 and IPv6, without its extra getsockopt.
func TestAccept4Peer(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
			if err != nil {
				t.Skipf("no %s on this machine: %v", host, err)
			}
			defer ln.Close()
			rc, err := ln.(*net.TCPListener).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var fd int
			var sa unix.Sockaddr
			testwait.For(t, "a connection to accept", waitLimit, func() bool {
				_ = rc.Control(func(lfd uintptr) { fd, sa, err = accept4(int(lfd)) })
				return err != unix.EAGAIN
			})
			if err != nil {
				t.Fatal(err)
			}
			_ = unix.Close(fd)
			want := c.LocalAddr().(*net.TCPAddr)
			var got net.TCPAddr
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				got = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
			case *unix.SockaddrInet6:
				got = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
			default:
				t.Fatalf("peer %T", sa)
			}
			if !got.IP.Equal(want.IP) || got.Port != want.Port {
				t.Fatalf("peer %v, want %v", &got, want)
			}
		})
	}
}

// TestLoopsStatus: the loops' own counters, which the metrics report,
// account for every connection accepted and for time spent serving.
func TestLoopsStatus(t *testing.T) {
	be := startEcho(t)
	p := newProxy(t, Options{Loops: 2}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	addr := p.addrOf(t, "svc")
	const n = 20
	for i := range n {
		c := dial(t, addr)
		roundTrip(t, c, fmt.Sprintf("hello %d\n", i))
		c.Close()
	}
	loops := p.Loops()
	if len(loops) != 2 {
		t.Fatalf("%d loops reported, want 2", len(loops))
	}
	var accepted uint64
	var busy time.Duration
	for _, l := range loops {
		accepted += l.Accepted
		busy += l.Busy
	}
	if accepted != n || p.statusOf("svc").Accepted != n {
		t.Fatalf("loops accepted %d, the service %d, want %d", accepted, p.statusOf("svc").Accepted, n)
	}
	if busy <= 0 {
		t.Fatalf("loops busy for %v after serving %d connections", busy, n)
	}
}

// TestPipeSize: splice pipes are enlarged to pipeSize, at most
// maxBigPipes of them at once; the next keep the kernel's default, and
// the count goes back to zero once the pipes are closed.
func TestPipeSize(t *testing.T) {
	p := newProxy(t, Options{Loops: 1})
	l := p.loops[0]
	var pipes []*pipe
	l.call(func() {
		for range maxBigPipes + 2 {
			pp := l.getPipe()
			if pp == nil {
				t.Error("no pipe")
				return
			}
			pipes = append(pipes, pp)
		}
	})
	if t.Failed() {
		return
	}
	for i, pp := range pipes {
		sz, err := unix.FcntlInt(uintptr(pp.w), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			t.Fatal(err)
		}
		if big := i < maxBigPipes; big && sz != pipeSize || !big && sz >= pipeSize {
			t.Fatalf("pipe %d holds %d bytes (pipeSize %d, %d enlarged at most)", i, sz, pipeSize, maxBigPipes)
		}
	}
	if n := p.bigPipes.Load(); n != maxBigPipes {
		t.Fatalf("%d pipes counted enlarged, want %d", n, maxBigPipes)
	}
	l.call(func() {
		for _, pp := range pipes {
			l.putPipe(pp) // some pooled, the rest closed
		}
	})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n := p.bigPipes.Load(); n != 0 {
		t.Fatalf("%d enlarged pipes counted after every pipe was closed", n)
	}
}
