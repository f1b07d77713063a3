package main

import (
	"net"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// A proxy that loses its lease closes its idle sessions, and its log says
// how many: all of them, not 0 (SetRoute used to close them before
// CloseSessions counted).
func TestRouteChangeCountsClosedSessions(t *testing.T) {
	c := startFloodCluster(t, binPath, `"600ms"`)
	p := c.ps[0]
	// The harness's own requests through p end first: one still closing
	// when the ten below connect is counted with them (seen: 11 of 10).
	testwait.For(t, "no session left from the start", 10*time.Second, func() bool { s := p.d.service(t, "echo"); return s != nil && s.Active == 0 })
	var conns []net.Conn
	for range 10 {
		conn, err := net.DialTimeout("tcp", p.listen, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	testwait.For(t, "10 sessions", 10*time.Second, func() bool { s := p.d.service(t, "echo"); return s != nil && s.Active == 10 })
	for _, q := range c.ps[1:] { // the majority pauses: p's lease runs out
		q.d.cmd.Process.Signal(syscall.SIGSTOP)
		defer q.d.cmd.Process.Signal(syscall.SIGCONT)
	}
	for i, conn := range conns {
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Fatalf("session %d: read data, want it closed", i)
		}
	}
	re := regexp.MustCompile(`cluster: route changed.*from=a to="" sessions_closed=(\d+)`)
	var m []string
	testwait.For(t, "the route change logged", 10*time.Second, func() bool { m = re.FindStringSubmatch(p.d.logs.String()); return m != nil })
	if n, _ := strconv.Atoi(m[1]); n != 10 {
		t.Errorf("logged sessions_closed=%d, want 10: %s", n, m[0])
	}
}
