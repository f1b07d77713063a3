package health

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

const fakePassword = "do-not-send-me"

// tlsImpostor is a server that speaks a protocol's plain-text prelude and
// then TLS with a certificate no client trusts, and records every byte it
// receives inside TLS: it should receive none.
type tlsImpostor struct {
	ln   net.Listener
	mu   sync.Mutex
	got  []byte
	hand int // TLS handshakes completed
	wg   sync.WaitGroup
}

func startImpostor(t *testing.T, prelude, inside func(net.Conn) error) *tlsImpostor {
	t.Helper()
	ca, err := testenv.NewCA("impostor")
	if err != nil {
		t.Fatal(err)
	}
	st, err := ca.Issue("impostor", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(st.CertPEM, st.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &tlsImpostor{ln: ln}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if prelude != nil && prelude(c) != nil {
					return
				}
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				if tc.Handshake() != nil {
					return
				}
				f.mu.Lock()
				f.hand++
				f.mu.Unlock()
				rec := &recordingConn{Conn: tc, f: f}
				if inside != nil && inside(rec) != nil {
					return
				}
				io.Copy(io.Discard, rec)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *tlsImpostor) received() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.got...)
}

type recordingConn struct {
	net.Conn
	f *tlsImpostor
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.f.mu.Lock()
	c.f.got = append(c.f.got, p[:n]...)
	c.f.mu.Unlock()
	return n, err
}

// pgPrelude answers PostgreSQL's SSLRequest with 'S'.
func pgPrelude(c net.Conn) error {
	buf := make([]byte, 8)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	_, err := c.Write([]byte{'S'})
	return err
}

// pgInside reads the startup message and asks for a clear-text password.
func pgInside(c net.Conn) error {
	var n [4]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return err
	}
	if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(n[:]))-4); err != nil {
		return err
	}
	_, err := c.Write([]byte{'R', 0, 0, 0, 8, 0, 0, 0, 3})
	return err
}

// mysqlPrelude sends a MariaDB greeting that offers TLS and reads the
// client's SSL request.
func mysqlPrelude(c net.Conn) error {
	var p []byte
	p = append(p, 10)
	p = append(p, "5.5.5-10.11.0-MariaDB\x00"...)
	p = append(p, 1, 0, 0, 0)
	p = append(p, "abcdefgh"...)
	p = append(p, 0)
	// long password, 4.1, SSL, transactions, secure connection, plugin auth
	var caps uint32 = 0x0001 | 0x0200 | 0x0800 | 0x2000 | 0x8000 | 0x80000
	p = append(p, byte(caps), byte(caps>>8), 0x21, 2, 0, byte(caps>>16), byte(caps>>24), 21)
	p = append(p, make([]byte, 10)...)
	p = append(p, "ijklmnopqrst\x00"...)
	p = append(p, "mysql_native_password\x00"...)
	hdr := []byte{byte(len(p)), byte(len(p) >> 8), byte(len(p) >> 16), 0}
	if _, err := c.Write(append(hdr, p...)); err != nil {
		return err
	}
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return err
	}
	_, err := io.CopyN(io.Discard, c, int64(h[0])|int64(h[1])<<8|int64(h[2])<<16)
	return err
}

// A check with TLS on does not trust a certificate it cannot verify, and
// sends an impostor nothing: no user name, no password.
func TestTLSImpostorGetsNoCredential(t *testing.T) {
	for _, tc := range []struct {
		kind            string
		prelude, inside func(net.Conn) error
	}{
		{"postgres", pgPrelude, pgInside},
		{"redis", nil, nil},
		{"mysql", mysqlPrelude, nil},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			f := startImpostor(t, tc.prelude, tc.inside)
			spec := Spec{Kind: tc.kind, TLS: true, User: "monitor", Password: fakePassword, Timeout: 3 * time.Second}
			r := checkOnce(t, spec, f.ln.Addr().String())
			t.Logf("check: up=%v err=%v", r.Up, r.Err)
			if got := f.received(); len(got) > 0 {
				leak := ""
				if bytes.Contains(got, []byte(fakePassword)) {
					leak = " including the password"
				}
				t.Errorf("impostor received %d bytes inside TLS%s: %q", len(got), leak, got)
			}
			wantDown(t, r, ErrTLS)
		})
	}
}

// Against real servers with TLS on and certificates made here: the right CA
// passes; another CA, or another server name, fails with ErrTLS; skipping
// verification is an explicit opt-in that passes.
func TestTLSVerifiedAgainstRealServers(t *testing.T) {
	ca, err := testenv.NewCA("qp test ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testenv.NewCA("someone else")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("db", "127.0.0.1", "db.test")
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue("monitor")
	if err != nil {
		t.Fatal(err)
	}
	type server struct {
		kind, addr string
		spec       Spec
	}
	servers := []func(t *testing.T) server{
		func(t *testing.T) server {
			p := testenv.MustPostgres(t, testenv.PGOptions{TLS: cert})
			return server{"postgres", p.Addr(), pgSpec(p)}
		},
		func(t *testing.T) server {
			r := testenv.MustRedis(t, testenv.RedisOptions{Password: "pw", TLS: cert})
			return server{"redis", r.TLSAddr(), Spec{Kind: "redis", Password: "pw", Timeout: dbTimeout}}
		},
		func(t *testing.T) server {
			m := testenv.MustMariaDBWith(t, testenv.MariaOptions{TLS: cert})
			return server{"mysql", m.Addr(), Spec{Kind: "mysql", User: testenv.User, Password: testenv.DefaultPassword, Timeout: dbTimeout}}
		},
	}
	for _, start := range servers {
		srv := start(t)
		t.Run(srv.kind, func(t *testing.T) {
			spec := srv.spec
			spec.TLS, spec.TLSCA = true, ca.CertPEM
			wantUp(t, checkOnce(t, spec, srv.addr), RolePrimary)

			byName := spec
			byName.TLSServerName = "db.test"
			wantUp(t, checkOnce(t, byName, srv.addr), RolePrimary)

			withClient := spec
			withClient.TLSCert, withClient.TLSKey = client.CertPEM, client.KeyPEM
			wantUp(t, checkOnce(t, withClient, srv.addr), RolePrimary)

			wrongCA := spec
			wrongCA.TLSCA = other.CertPEM
			r := checkOnce(t, wrongCA, srv.addr)
			wantDown(t, r, ErrTLS)
			t.Logf("wrong CA: %v", r.Err)

			wrongName := spec
			wrongName.TLSServerName = "elsewhere.test"
			r = checkOnce(t, wrongName, srv.addr)
			wantDown(t, r, ErrTLS)
			t.Logf("wrong name: %v", r.Err)

			skip := wrongCA
			skip.TLSSkipVerify = true
			wantUp(t, checkOnce(t, skip, srv.addr), RolePrimary)
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	for _, spec := range []Spec{
		{Kind: "postgres", TLS: true, TLSCA: []byte("not pem")},
		{Kind: "redis", TLS: true, TLSCert: []byte("x")},
		{Kind: "mysql", TLS: true, TLSKey: []byte("x")},
		{Kind: "http", TLS: true, TLSCA: []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")},
	} {
		if c, err := NewChecker(spec, "127.0.0.1:1"); err == nil {
			c.Close()
			t.Errorf("%s: bad TLS material accepted", spec.Kind)
		}
	}
	s := Spec{Kind: "postgres", TLS: true, TLSKey: []byte("PRIVATE KEY BYTES"), TLSCert: []byte("CERT")}
	if str := s.String(); bytes.Contains([]byte(str), []byte("PRIVATE KEY BYTES")) {
		t.Errorf("key shown: %s", str)
	}
}
