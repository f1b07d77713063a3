//go:build linux

package proxy

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/pires/go-proxyproto"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// proxyAware is a backend that reads a PROXY header, answers the source
// address it carries on a line, then echoes.
func proxyAware(c *net.TCPConn) {
	br := bufio.NewReader(c)
	h, err := proxyproto.Read(br)
	if err != nil {
		_, _ = fmt.Fprintf(c, "no header: %v\n", err)
		return
	}
	_, _ = fmt.Fprintf(c, "%s\n", h.SourceAddr)
	_, _ = io.Copy(c, br)
	_ = c.CloseWrite()
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// TestProxyProtocol: headers are sent (v1, v2) with the client's address,
// or with the address a trusted balancer's header gave; a client from an
// accept_proxy network without a valid header is refused, one from
// elsewhere is taken as it is; header bytes are not counted as client bytes.
func TestProxyProtocol(t *testing.T) {
	be := startServer(t, "pp", proxyAware)
	for _, v := range []ProxyVersion{ProxyV1, ProxyV2} {
		t.Run(v.String(), func(t *testing.T) {
			cfg := oneBackend("svc", be.addr())
			cfg.Backends[0].SendProxy = v
			cfg.AcceptProxy = []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}
			cfg.ConnectTimeout = time.Second
			p := newProxy(t, Options{}, cfg)
			p.SetHealth("svc", "a", upAny)
			addr := p.addrOf(t, "svc")

			// Not from a balancer: the socket's own address is sent.
			c := dialFrom(t, "127.0.0.2", addr)
			if got, want := readLine(t, c), c.LocalAddr().String(); got != want {
				t.Fatalf("backend saw %q, want %q", got, want)
			}
			roundTrip(t, c, "payload")

			// From the balancer: its header's address is passed on, even
			// when the header arrives in pieces and data follows it at once.
			lb := dialFrom(t, "127.0.0.9", addr)
			hdr := "PROXY TCP4 198.51.100.7 127.0.0.1 4711 5432\r\n"
			if _, err := io.WriteString(lb, hdr[:9]); err != nil {
				t.Fatal(err)
			}
			testwait.For(t, "the partial header to be held", waitLimit, func() bool { return p.statusOf("svc").Active == 2 })
			if _, err := io.WriteString(lb, hdr[9:]+"first"); err != nil {
				t.Fatal(err)
			}
			if got := readLine(t, lb); got != "198.51.100.7:4711" {
				t.Fatalf("backend saw %q through the balancer", got)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(lb, buf); err != nil || string(buf) != "first" {
				t.Fatalf("bytes after the header: %q %v", buf, err)
			}

			// A v2 header from the balancer.
			lb2 := dialFrom(t, "127.0.0.9", addr)
			h2 := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 99}, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5432})
			if _, err := h2.WriteTo(lb2); err != nil {
				t.Fatal(err)
			}
			if got := readLine(t, lb2); got != "[2001:db8::7]:99" {
				t.Fatalf("backend saw %q through the balancer (v2)", got)
			}

			// From the balancer without a header, or with garbage: refused.
			bad := dialFrom(t, "127.0.0.9", addr)
			_, _ = io.WriteString(bad, "GET / HTTP/1.0\r\n\r\n")
			expectClosed(t, bad)

			_ = c.Close()
			_ = lb.Close()
			_ = lb2.Close()
			testwait.For(t, "sessions to end", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
			st := p.statusOf("svc")
			if st.Refused != 1 {
				t.Fatalf("refused %d, want 1", st.Refused)
			}
			if b := st.backend("a"); b.BytesIn != uint64(len("payload")+len("first")) {
				t.Fatalf("bytes in %d: the header was counted", b.BytesIn)
			}
		})
	}
}

// TestProxyProtocolHeaderTimeout: a balancer that never sends its header
// is closed after the header timeout, not held for ever.
func TestProxyProtocolHeaderTimeout(t *testing.T) {
	be := startEcho(t)
	cfg := oneBackend("svc", be.addr())
	cfg.AcceptProxy = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	p := newProxy(t, Options{}, cfg)
	p.SetHealth("svc", "a", upAny)
	c := dial(t, p.addrOf(t, "svc"))
	start := time.Now()
	expectClosed(t, c)
	if el := time.Since(start); el < proxyHeaderTimeout/2 {
		t.Fatalf("closed after %v, before the header timeout", el)
	}
}

// TestProxyProtocolMariaDB: MariaDB with proxy_protocol_networks reports the
// real client's address, sent as v1 and v2, for a client connecting
// directly and for one behind a balancer that sent its own header.
func TestProxyProtocolMariaDB(t *testing.T) {
	testenv.Need(t, "mariadb")
	m, err := testenv.StartMariaDB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Stop() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Exec(ctx, "SET GLOBAL proxy_protocol_networks = '127.0.0.0/8'"); err != nil {
		t.Fatal(err)
	}

	// Clients: one dialling from 127.0.0.2, one from 127.0.0.9 that speaks
	// as a balancer for 198.51.100.7:4711.
	var mu sync.Mutex
	local := map[string]string{}
	mysql.RegisterDialContext("qpdirect", func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			mu.Lock()
			local["direct"] = c.LocalAddr().String()
			mu.Unlock()
		}
		return c, err
	})
	mysql.RegisterDialContext("qpbalancer", func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if _, err := io.WriteString(c, "PROXY TCP4 198.51.100.7 127.0.0.1 4711 3306\r\n"); err != nil {
			_ = c.Close()
			return nil, err
		}
		return c, nil
	})
	hostSeen := func(t *testing.T, network, addr string) string {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = testenv.User, testenv.DefaultPassword, network, addr, "qp"
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var host string
		if err := db.QueryRowContext(ctx, "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()").Scan(&host); err != nil {
			t.Fatalf("through the proxy (%s): %v", network, err)
		}
		return host
	}

	for _, v := range []ProxyVersion{ProxyV1, ProxyV2} {
		t.Run(v.String(), func(t *testing.T) {
			p := newProxy(t, Options{}, ServiceConfig{Name: "db", Listen: "127.0.0.1:0",
				AcceptProxy: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")},
				Backends:    []Backend{{Name: "m", Address: m.Addr(), SendProxy: v}}})
			p.SetHealth("db", "m", upAny)
			addr := p.addrOf(t, "db")
			got := hostSeen(t, "qpdirect", addr)
			mu.Lock()
			want := local["direct"]
			mu.Unlock()
			if got != want {
				t.Fatalf("MariaDB saw the client as %q, want %q (the client's own address)", got, want)
			}
			if got := hostSeen(t, "qpbalancer", addr); got != "198.51.100.7:4711" {
				t.Fatalf("MariaDB saw the balanced client as %q, want 198.51.100.7:4711", got)
			}
			if !strings.HasPrefix(want, "127.0.0.2:") {
				t.Fatalf("client address %q", want)
			}
		})
	}
}
