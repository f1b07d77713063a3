package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
	"golang.org/x/sys/unix"
)

func oneBackend(name, addr string) ServiceConfig {
	return ServiceConfig{Name: name, Listen: "127.0.0.1:0", Backends: []Backend{{Name: "a", Address: addr}}}
}

// TestIntegrity sends random payloads up to several MiB both ways at once
// through the proxy to an echo backend and compares every byte.
func TestIntegrity(t *testing.T) {
	be := startEcho(t)
	p := newProxy(t, Options{}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	addr := p.addrOf(t, "svc")
	sizes := []int{0, 1, 1000, 32 << 10, 32<<10 + 1, 1 << 20, 6<<20 + 12345}
	var wg sync.WaitGroup
	var total int
	for i, size := range sizes {
		total += size
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			payload := make([]byte, size)
			for j := range payload {
				payload[j] = byte(rng.Uint32())
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(payload)
				if err == nil {
					err = c.(*net.TCPConn).CloseWrite()
				}
				errc <- err
			}()
			got, err := io.ReadAll(c)
			if werr := <-errc; werr != nil {
				t.Errorf("size %d: write: %v", size, werr)
			}
			if err != nil {
				t.Errorf("size %d: read: %v", size, err)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("size %d: echo differs (got %d bytes)", size, len(got))
			}
		}()
	}
	wg.Wait()
	testwait.For(t, "sessions to end", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
	b := p.statusOf("svc").backend("a")
	if b.BytesIn != uint64(total) || b.BytesOut != uint64(total) {
		t.Fatalf("bytes in/out %d/%d, want %d", b.BytesIn, b.BytesOut, total)
	}
	if b.Active != 0 || b.Sessions != uint64(len(sizes)) {
		t.Fatalf("active %d sessions %d", b.Active, b.Sessions)
	}
}

// TestHalfCloseClientFirst: the client finishes its request with a
// half-close; the backend answers after EOF and the answer still arrives.
func TestHalfCloseClientFirst(t *testing.T) {
	be := startServer(t, "hc", func(c *net.TCPConn) {
		req, err := io.ReadAll(c)
		if err != nil {
			return
		}
		_, _ = c.Write(append([]byte("got:"), req...))
	})
	p := newProxy(t, Options{}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	c := dial(t, p.addrOf(t, "svc"))
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got:request" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// TestHalfCloseBackendFirst: the backend sends and half-closes; the client
// reads to EOF and can still send, and the backend still receives.
func TestHalfCloseBackendFirst(t *testing.T) {
	received := make(chan string, 1)
	be := startServer(t, "hc", func(c *net.TCPConn) {
		_, _ = c.Write([]byte("banner"))
		_ = c.CloseWrite()
		b, _ := io.ReadAll(c)
		received <- string(b)
	})
	p := newProxy(t, Options{}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	c := dial(t, p.addrOf(t, "svc"))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "banner" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := c.Write([]byte("after-eof")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	select {
	case r := <-received:
		if r != "after-eof" {
			t.Fatalf("backend got %q", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend never got the client's bytes after its own half-close")
	}
	testwait.For(t, "session end", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestBackendRefuses: a dial failure moves on to the next eligible backend
// (active-active) and is counted; with no other backend the client is
// closed.
func TestBackendRefuses(t *testing.T) {
	good := startNamed(t, "good")
	bad := closedPort(t)
	p := newProxy(t, Options{},
		ServiceConfig{Name: "aa", Listen: "127.0.0.1:0", Mode: ActiveActive, Backends: []Backend{
			{Name: "bad", Address: bad}, {Name: "good", Address: good.addr()}}},
		ServiceConfig{Name: "ap", Listen: "127.0.0.1:0", Backends: []Backend{{Name: "bad", Address: bad}}})
	for _, s := range []string{"aa", "ap"} {
		p.SetHealth(s, "bad", upAny)
	}
	p.SetHealth("aa", "good", upAny)
	for i := 0; i < 4; i++ {
		if name, _ := backendOf(t, p.addrOf(t, "aa")); name != "good" {
			t.Fatalf("got %q", name)
		}
	}
	if f := p.statusOf("aa").backend("bad").DialFailures; f != 2 {
		t.Fatalf("dial failures %d, want 2 (round-robin tries bad first every other time)", f)
	}
	c := dial(t, p.addrOf(t, "ap"))
	expectClosed(t, c)
	st := p.statusOf("ap")
	if st.backend("bad").DialFailures != 1 || st.Refused != 1 {
		t.Fatalf("dial failures %d refused %d", st.backend("bad").DialFailures, st.Refused)
	}
}

// blackHole returns the address of a listener that never accepts and whose
// accept queue is full, so further SYNs are dropped and connects hang.
func blackHole(t *testing.T) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	t.Cleanup(func() { _ = f.Close() })
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
	// Fill the accept queue until a connect times out.
	for i := 0; i < 16; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr
			}
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	t.Fatal("could not fill the accept queue")
	return ""
}

// TestBackendBlackHole: a connect that never completes is abandoned within
// ConnectTimeout and the next backend is used; alone, the client is closed.
func TestBackendBlackHole(t *testing.T) {
	hole := blackHole(t)
	good := startNamed(t, "good")
	p := newProxy(t, Options{},
		ServiceConfig{Name: "aa", Listen: "127.0.0.1:0", Mode: ActiveActive, ConnectTimeout: 400 * time.Millisecond,
			Backends: []Backend{{Name: "hole", Address: hole}, {Name: "good", Address: good.addr()}}},
		ServiceConfig{Name: "ap", Listen: "127.0.0.1:0", ConnectTimeout: 300 * time.Millisecond,
			Backends: []Backend{{Name: "hole", Address: hole}}})
	p.SetHealth("aa", "hole", upAny)
	p.SetHealth("aa", "good", upAny)
	p.SetHealth("ap", "hole", upAny)
	for i := 0; i < 2; i++ {
		if name, _ := backendOf(t, p.addrOf(t, "aa")); name != "good" {
			t.Fatalf("got %q", name)
		}
	}
	if f := p.statusOf("aa").backend("hole").DialFailures; f != 1 {
		t.Fatalf("dial failures %d, want 1", f)
	}
	c := dial(t, p.addrOf(t, "ap"))
	expectClosed(t, c)
	if f := p.statusOf("ap").backend("hole").DialFailures; f != 1 {
		t.Fatalf("dial failures %d, want 1", f)
	}
}

// TestBackendResets: a backend that resets mid-session makes the proxy end
// the client's session (reset passed on) and release it.
func TestBackendResets(t *testing.T) {
	be := startServer(t, "rst", func(c *net.TCPConn) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		_ = c.SetLinger(0)
		_ = c.Close()
	})
	p := newProxy(t, Options{}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	c := dial(t, p.addrOf(t, "svc"))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read: %v, want a reset passed on", err)
	}
	testwait.For(t, "session release", waitLimit, func() bool {
		st := p.statusOf("svc")
		return st.Active == 0 && st.backend("a").Active == 0
	})
}
