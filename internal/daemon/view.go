package daemon

import (
	"fmt"
	"slices"
	"strings"

	gometrics "github.com/hashicorp/go-metrics"

	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// status joins what the proxy routes with what the health monitor sees.
func (d *Daemon) status() *adminapi.Status {
	d.mu.Lock()
	st := &adminapi.Status{Version: d.version, Started: d.started, Config: d.cfgPath, LastReload: d.lastReload}
	roles := map[string]string{}
	for _, s := range d.cfg.Services {
		if s.Role != "" && s.Role != "any" {
			roles[s.Name] = string(s.Role)
		}
	}
	d.mu.Unlock()

	states := map[[2]string]health.State{}
	for _, s := range d.mon.States() {
		states[[2]string{s.Service, s.Backend}] = s
	}
	forwarding, why := map[string]string{}, map[string]string{}
	for _, ps := range d.px.Status() {
		why[ps.Name] = ps.Reason
		for _, b := range ps.Backends {
			if b.Eligible && ps.Target == b.Name {
				forwarding[ps.Name] = b.Name
			}
		}
		sv := adminapi.Service{
			Name: ps.Name, Listen: ps.Listen, Mode: ps.Mode.String(), Role: roles[ps.Name],
			Target: ps.Target, Why: ps.Reason, Active: ps.Active, Accepted: ps.Accepted, Refused: ps.Refused,
		}
		if ps.Addr != "" {
			sv.Listen = ps.Addr
		}
		if ps.ListenError != "" {
			sv.Alerts = append(sv.Alerts, "not listening: "+ps.ListenError)
		}
		if ps.DualPrimary {
			where := fmt.Sprintf("writes stay on %q", ps.Target)
			if ps.Target == "" {
				where = "routing none"
			}
			sv.Alerts = append(sv.Alerts, fmt.Sprintf("dual_primary: %s all report primary; %s", strings.Join(ps.Primaries, ", "), where))
		}
		for _, b := range ps.Backends {
			bv := adminapi.Backend{
				Name: b.Name, Address: b.Address, Priority: b.Priority, Weight: b.Weight,
				Health: "unknown", Role: b.Health.Role.String(), LagBytes: -1, LagSeconds: -1,
				Active: b.Active, Refused: b.Refused, DialFailures: b.DialFailures, BytesIn: b.BytesIn, BytesOut: b.BytesOut,
				Draining: b.Draining, Fenced: b.Fenced,
			}
			if hs, ok := states[[2]string{ps.Name, b.Name}]; ok {
				bv.Health = hs.Status.String()
				bv.Role = hs.Role.String()
				bv.LagBytes = hs.LagBytes
				if hs.Lag >= 0 {
					bv.LagSeconds = hs.Lag.Seconds()
				}
				bv.CheckLatencyMS = float64(hs.Latency.Microseconds()) / 1000
				bv.LastError = hs.LastError
				bv.LastCheck = hs.LastCheck
				bv.LastChange = hs.LastChange
				bv.Reason = hs.Reason
			}
			sv.Backends = append(sv.Backends, bv)
		}
		st.Services = append(st.Services, sv)
	}
	if d.cluster != nil {
		st.Cluster = d.cluster.view()
		holdBack(st.Cluster, forwarding, why)
		mergeClusterAlerts(st)
	}
	return st
}

// mergeClusterAlerts adds the cluster's alerts about each service (and a
// store that cannot be written) to the service's own.
func mergeClusterAlerts(st *adminapi.Status) {
	at := make(map[string]int, len(st.Services))
	for i := range st.Services {
		at[st.Services[i].Name] = i
	}
	for _, cs := range st.Cluster.Services {
		if i, ok := at[cs.Service]; ok {
			sv := &st.Services[i]
			for _, a := range cs.Alerts {
				if strings.HasPrefix(a, "dual_primary") && slices.ContainsFunc(sv.Alerts, func(x string) bool { return strings.HasPrefix(x, "dual_primary") }) {
					continue // the local view said it already
				}
				sv.Alerts = append(sv.Alerts, a)
			}
			if st.Cluster.StoreError != "" {
				sv.Alerts = append(sv.Alerts, "store_failed: state_dir cannot be written ("+st.Cluster.StoreError+"): this proxy neither votes nor routes until it can")
			}
		}
	}
}

// holdBack makes each service's Routing what this proxy forwards to now:
// the cluster may grant a route that the local view holds back.
func holdBack(v *adminapi.ClusterStatus, forwarding, why map[string]string) {
	for i := range v.Services {
		s := &v.Services[i]
		if s.Routing != "" && forwarding[s.Service] != s.Routing {
			s.Held = fmt.Sprintf("cluster routes %q; held here: %s", s.Routing, why[s.Service])
			s.Routing = ""
		}
	}
}

// syncMetrics exports the proxy's counters and the health states at scrape time.
func (d *Daemon) syncMetrics() {
	m := d.metrics
	for _, ps := range d.px.Status() {
		sl := serviceLabels(ps.Name)
		m.counter([]string{"connections", "accepted"}, sl, ps.Accepted)
		m.counter([]string{"connections", "refused"}, sl, ps.Refused)
		m.gauge([]string{"connections", "active"}, sl, float64(ps.Active))
		m.gauge([]string{"connections", "held"}, sl, float64(ps.Held))
		dual := 0.0
		if ps.DualPrimary {
			dual = 1
		}
		m.gauge([]string{"alert", "dual_primary"}, sl, dual)
		for _, b := range ps.Backends {
			bl := backendLabels(ps.Name, b.Name)
			m.counter([]string{"backend", "sessions"}, bl, b.Sessions)
			m.counter([]string{"backend", "dial_failures"}, bl, b.DialFailures)
			m.counter([]string{"backend", "refused"}, bl, b.Refused)
			m.counter([]string{"backend", "bytes_in"}, bl, b.BytesIn)
			m.counter([]string{"backend", "bytes_out"}, bl, b.BytesOut)
			m.gauge([]string{"backend", "active"}, bl, float64(b.Active))
			target := 0.0
			if b.Name == ps.Target {
				target = 1
			}
			m.gauge([]string{"backend", "target"}, bl, target)
			draining := 0.0
			if b.Draining {
				draining = 1
			}
			m.gauge([]string{"backend", "draining"}, bl, draining)
			fenced := 0.0
			if b.Fenced {
				fenced = 1
			}
			m.gauge([]string{"backend", "fenced"}, bl, fenced)
		}
	}
	if d.cluster != nil {
		cv := d.cluster.view()
		for _, s := range cv.Services {
			sl := serviceLabels(s.Service)
			m.gauge([]string{"cluster", "epoch"}, sl, float64(s.Epoch))
			m.gauge([]string{"cluster", "max_voted"}, sl, float64(s.MaxVoted))
			m.gauge([]string{"cluster", "lease_remaining_seconds"}, sl, s.LeaseMS/1000)
			paused := 0.0
			if s.Paused {
				paused = 1
			}
			m.gauge([]string{"cluster", "paused"}, sl, paused)
			for _, kind := range []string{"promote_held", "no_primary"} {
				on := 0.0
				if slices.ContainsFunc(s.Alerts, func(a string) bool { return strings.HasPrefix(a, kind) }) {
					on = 1
				}
				m.gauge([]string{"alert", kind}, sl, on)
			}
			if svc := d.serviceConfig(s.Service); svc != nil {
				for _, b := range svc.Backends {
					f := 0.0
					if slices.Contains(s.Fenced, b.Name) {
						f = 1
					}
					m.gauge([]string{"cluster", "fenced"}, backendLabels(s.Service, b.Name), f)
				}
			}
		}
		rec := 0.0
		if cv.Recovering {
			rec = 1
		}
		m.gauge([]string{"cluster", "recovering"}, nil, rec)
		storeFailed := 0.0
		if cv.StoreError != "" {
			storeFailed = 1
		}
		m.gauge([]string{"cluster", "store_failed"}, nil, storeFailed)
		m.gauge([]string{"cluster", "reachable_peers"}, nil, float64(len(cv.Reachable)))
		c := cv.Counters
		for name, v := range map[string]uint64{
			"garbage": c.Garbage, "stranger": c.Stranger, "unknown_service": c.UnknownService, "replay": c.Replay,
			"stale": c.Stale, "queue_full": c.QueueFull,
		} {
			m.counter([]string{"cluster", "dropped"}, []gometrics.Label{{Name: "reason", Value: name}}, v)
		}
		m.counter([]string{"cluster", "votes_granted"}, nil, c.VotesGranted)
		m.counter([]string{"cluster", "votes_refused"}, nil, c.VotesRefused)
		m.counter([]string{"cluster", "proposals"}, nil, c.Proposals)
		m.counter([]string{"cluster", "proposals_given_up"}, nil, c.GivenUp)
		m.counter([]string{"cluster", "commits"}, nil, c.Commits)
		m.counter([]string{"cluster", "saves"}, nil, c.Saves)
		m.counter([]string{"cluster", "adoptions"}, nil, c.Adoptions)
		m.counter([]string{"cluster", "no_candidate"}, nil, c.NoCandidate)
		m.counter([]string{"cluster", "persist_errors"}, nil, c.PersistErrors)
	}
	for _, s := range d.mon.States() {
		bl := backendLabels(s.Service, s.Backend)
		up := 0.0
		if s.Status == health.StatusUp {
			up = 1
		}
		m.gauge([]string{"backend", "up"}, bl, up)
		m.gauge([]string{"backend", "lag_bytes"}, bl, float64(s.LagBytes))
		m.gauge([]string{"backend", "lag_seconds"}, bl, s.Lag.Seconds())
		m.gauge([]string{"backend", "check_latency_seconds"}, bl, s.Latency.Seconds())
		m.counter([]string{"health", "checks"}, bl, s.Checks)
		m.counter([]string{"health", "failures"}, bl, s.Failures)
	}
}
