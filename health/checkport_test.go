package health

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

func TestSpecCheckAddress(t *testing.T) {
	for _, tc := range []struct {
		spec      Spec
		addr, out string
	}{
		{Spec{}, "10.0.0.1:5432", "10.0.0.1:5432"},
		{Spec{Port: 8008}, "10.0.0.1:5432", "10.0.0.1:8008"},
		{Spec{Port: 8008}, "db1.example:5432", "db1.example:8008"},
		{Spec{Port: 8008}, "[::1]:5432", "[::1]:8008"},
		{Spec{Address: "192.168.0.1:9187"}, "10.0.0.1:5432", "192.168.0.1:9187"},
		{Spec{Address: "192.168.0.1:9187", Port: 8008}, "10.0.0.1:5432", "192.168.0.1:9187"},
		{Spec{Port: 8008}, "no-port", "no-port"},
	} {
		if got := tc.spec.CheckAddress(tc.addr); got != tc.out {
			t.Errorf("%+v.CheckAddress(%q) = %q, want %q", tc.spec, tc.addr, got, tc.out)
		}
	}
	for _, spec := range []Spec{
		{Kind: "tcp", Port: 70000},
		{Kind: "tcp", Port: -1},
		{Kind: "tcp", Port: 8008}, // on "no-port": no host to put it on
		{Kind: "tcp", Roles: "patroni"},
		{Kind: "http", Roles: "consul"},
		{Kind: "http", Roles: "patroni", Method: "HEAD"},
	} {
		if c, err := NewChecker(spec, "no-port"); err == nil {
			c.Close()
			t.Errorf("NewChecker(%+v) succeeded, want an error", spec)
		}
	}
}

// A check with a port goes there, not to the traffic's port: a tcp check
// is up though nothing listens on the traffic's port, and an http check is
// up though the traffic's port accepts and never answers (as a database
// would answer an HTTP request). A check address goes to another host:port.
func TestCheckPort(t *testing.T) {
	refused := closedPort(t)
	checkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer checkLn.Close()
	checkPort := checkLn.Addr().(*net.TCPAddr).Port

	tcp := Spec{Kind: "tcp", Timeout: 2 * time.Second}
	wantDown(t, checkOnce(t, tcp, refused), ErrRefused)
	tcp.Port = checkPort
	wantUp(t, checkOnce(t, tcp, refused), RoleUnknown)

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer srv.Close()
	httpAddr := strings.TrimPrefix(srv.URL, "http://")
	_, httpPort, _ := net.SplitHostPort(httpAddr)
	traffic := fakeServer(t, silent)

	web := Spec{Kind: "http", ExpectBody: "ok", Timeout: 300 * time.Millisecond}
	wantDown(t, checkOnce(t, web, traffic), ErrTimeout)
	web.Port, _ = strconv.Atoi(httpPort)
	wantUp(t, checkOnce(t, web, traffic), RoleUnknown)
	web.Port = 0
	web.Address = httpAddr
	wantUp(t, checkOnce(t, web, traffic), RoleUnknown)
	web.Address = refused // the check address wins over the traffic's
	wantDown(t, checkOnce(t, web, httpAddr), ErrRefused)

	// Exec checks are told the checked address.
	exec := Spec{Kind: "exec", Port: 8008, Timeout: 10 * time.Second,
		Command: []string{"/bin/sh", "-c", `[ "$QP_ADDRESS" = 127.0.0.1:8008 ] && [ "$QP_PORT" = 8008 ]`}}
	wantUp(t, checkOnce(t, exec, "127.0.0.1:5432"), RoleUnknown)
}

// Services whose traffic goes to different ports of one host and whose
// checks go to one port of it share one check; a service checking the
// traffic's own port has its own.
func TestCheckPortShared(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	m := NewMonitor(nil, nil)
	defer m.Close()
	spec := Spec{Kind: "tcp", Port: port, Interval: 50 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}
	byAddr := spec
	byAddr.Port, byAddr.Address = 0, ln.Addr().String()
	own := spec
	own.Port = 0
	refused := closedPort(t)
	if err := m.Set([]Target{
		{Service: "pg", Backend: "a", Address: refused, Spec: spec},
		{Service: "bouncer", Backend: "a", Address: "127.0.0.1:1", Spec: spec},
		{Service: "exporter", Backend: "a", Address: "127.0.0.1:2", Spec: byAddr},
		{Service: "own", Backend: "a", Address: refused, Spec: own},
	}); err != nil {
		t.Fatal(err)
	}
	if got := m.Checks(); got != 2 {
		t.Errorf("%d checks, want 2: one for the three that check port %d, one for the traffic's port", got, port)
	}
	testwait.For(t, "the checked port up for all three, the traffic's own port down", 20*time.Second, func() bool {
		up, down := 0, 0
		for _, s := range m.States() {
			switch {
			case s.Status == StatusUp && s.CheckAddress == ln.Addr().String():
				up++
			case s.Status == StatusDown && s.Service == "own" && s.CheckAddress == "":
				down++
			}
		}
		return up == 3 && down == 1
	})
}
