package daemon

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// A mass failover's "target changed" for 300 services is five lines and a
// summary; lines about no service, and other messages, are untouched.
func TestLogBurstsSummarised(t *testing.T) {
	out := &testenv.Buffer{}
	log := NewLogger(config.Log{Level: "info"}, out)
	for i := range 300 {
		log.Info("target changed", "service", fmt.Sprintf("svc-%03d", i), "old", "a", "new", "b")
	}
	for range 10 {
		log.Info("cluster: peer changed", "peer", "qp2")
	}
	log.With("service", "pg").Warn("promote hook failed")
	testwait.For(t, "the summary line", 10*time.Second, func() bool { return strings.Contains(out.String(), "more_services=295") })
	s := out.String()
	if n := strings.Count(s, `msg="target changed" service=`); n != 5 {
		t.Errorf("%d single lines, want 5:\n%s", n, s)
	}
	if !strings.Contains(s, "for svc-005, svc-006, svc-007, svc-008, svc-009 and 290 more") {
		t.Errorf("the summary does not name the first services:\n%s", s)
	}
	if n := strings.Count(s, "cluster: peer changed"); n != 10 {
		t.Errorf("%d lines about no service, want all 10", n)
	}
	if !strings.Contains(s, `msg="promote hook failed" service=pg`) {
		t.Errorf("a line of another kind was held back:\n%s", s)
	}

	// At debug level every line is there too.
	out = &testenv.Buffer{}
	log = NewLogger(config.Log{Level: "debug"}, out)
	for i := range 20 {
		log.Info("target changed", "service", fmt.Sprintf("svc-%03d", i))
	}
	testwait.For(t, "the summary line at debug", 10*time.Second, func() bool { return strings.Contains(out.String(), "more_services=15") })
	if n := strings.Count(out.String(), `msg="target changed" service=`); n != 20 {
		t.Errorf("%d lines at debug level, want all 20:\n%s", n, out.String())
	}
}
