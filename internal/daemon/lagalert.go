package daemon

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

// lagAlerts is the lag alert (alert_lag, alert_lag_bytes: the seed's
// "alert if lag > 10s"): raised when a replica's lag, as this proxy's check
// reads it, crosses a bound, cleared when it is back within them or the
// replica is no longer an up replica. Each crossing is logged, journalled
// and told to notify once, not at every check.
type lagAlerts struct {
	mu sync.Mutex
	on map[[2]string]string // service, backend -> what is raised
}

func newLagAlerts() *lagAlerts { return &lagAlerts{on: map[[2]string]string{}} }

// over says what bound s crosses ("" for none).
func lagOver(svc *config.Service, s health.State) string {
	if s.Status != health.StatusUp || s.Role != health.RoleReplica {
		return ""
	}
	var parts []string
	if svc.AlertLag > 0 && s.Lag > svc.AlertLag {
		parts = append(parts, fmt.Sprintf("%v behind (alert_lag %v)", s.Lag.Round(time.Millisecond), svc.AlertLag))
	}
	if svc.AlertLagBytes > 0 && s.LagBytes > svc.AlertLagBytes {
		parts = append(parts, fmt.Sprintf("%d bytes behind (alert_lag_bytes %d)", s.LagBytes, svc.AlertLagBytes))
	}
	return strings.Join(parts, ", ")
}

// check records s; raised or cleared (with what) on a crossing.
func (a *lagAlerts) check(svc *config.Service, s health.State) (raised, cleared bool, what string) {
	k := [2]string{s.Service, s.Backend}
	now := lagOver(svc, s)
	a.mu.Lock()
	defer a.mu.Unlock()
	was, had := a.on[k]
	switch {
	case now != "" && !had:
		a.on[k] = now
		return true, false, now
	case now != "":
		a.on[k] = now // the figure moves; no new crossing
	case had:
		delete(a.on, k)
		return false, true, was
	}
	return false, false, ""
}

// alerts lists the raised alerts of service, for /status.
func (a *lagAlerts) alerts(service string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for k, what := range a.on {
		if k[0] == service {
			out = append(out, fmt.Sprintf("lag: replica %s is %s", k[1], what))
		}
	}
	slices.Sort(out)
	return out
}

func (a *lagAlerts) raised(service, backend string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.on[[2]string{service, backend}]
	return ok
}

// lagChanged applies a health change to the lag alert of its backend.
func (d *Daemon) lagChanged(s health.State) {
	d.mu.Lock()
	svc := d.cfg.Service(s.Service)
	d.mu.Unlock()
	if svc == nil {
		return
	}
	raised, cleared, what := d.lag.check(svc, s)
	if !raised && !cleared {
		return
	}
	event, summary := "lag_alert", fmt.Sprintf("replication lag alert: replica %s is %s", s.Backend, what)
	if cleared {
		event, summary = "lag_cleared", fmt.Sprintf("replication lag alert cleared: replica %s was %s", s.Backend, what)
		d.log.Info(summary, "service", s.Service, "backend", s.Backend)
	} else {
		d.log.Warn(summary, "service", s.Service, "backend", s.Backend)
	}
	d.note(journal.Entry{Service: s.Service, Kind: "alert", Summary: summary})
	if len(svc.Hooks.Notify) == 0 {
		return
	}
	lagSecs := ""
	if s.Lag >= 0 {
		lagSecs = strconv.FormatFloat(s.Lag.Seconds(), 'f', 3, 64)
	}
	env := map[string]string{"QP_SERVICE": svc.Name, "QP_EVENT": event, "QP_BACKEND": s.Backend,
		"QP_BACKEND_ADDRESS": backendAddress(svc, s.Backend), "QP_LAG_SECONDS": lagSecs,
		"QP_LAG_BYTES": strconv.FormatInt(s.LagBytes, 10), "QP_REASON": summary}
	hooks, timeout := svc.Hooks.Notify, svc.Hooks.Timeout
	d.hooks.enqueue(svc.Name, func() { _ = d.hooks.runOne(svc.Name, "notify", hooks, env, timeout) })
}
