package daemon

import (
	"fmt"
	"slices"
	"strings"

	"github.com/quorumproxy/quorumproxy/config"
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
			TargetSince: ps.TargetSince,
		}
		sv.Routes, _ = routesOf(ps)
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
		sv.Alerts = append(sv.Alerts, d.lag.alerts(ps.Name)...)
		if ps.Target == "" && strings.Contains(ps.Reason, "rpo = zero") {
			sv.Alerts = append(sv.Alerts, "no_failover: "+ps.Reason)
		}
		sc := d.serviceConfig(ps.Name)
		for _, b := range ps.Backends {
			bv := adminapi.Backend{
				Name: b.Name, Address: b.Address, Priority: b.Priority, Weight: b.Weight,
				Health: "unknown", Role: b.Health.Role.String(), LagBytes: -1, LagSeconds: -1, Position: -1,
				Active: b.Active, Refused: b.Refused, DialFailures: b.DialFailures, BytesIn: b.BytesIn, BytesOut: b.BytesOut,
				Draining: b.Draining, Fenced: b.Fenced,
			}
			if sc != nil {
				if i := slices.IndexFunc(sc.Backends, func(x config.Backend) bool { return x.Name == b.Name }); i >= 0 {
					bv.Region = sc.Backends[i].Region
				}
			}
			if hs, ok := states[[2]string{ps.Name, b.Name}]; ok {
				bv.Health = hs.Status.String()
				bv.CheckAddress = hs.CheckAddress
				bv.Role = hs.Role.String()
				bv.LagBytes = hs.LagBytes
				bv.Position, bv.PositionFresh = hs.Position, hs.PositionFresh
				bv.SyncStandbys = hs.SyncStandbys
				if bv.Upstream = hs.Upstream; hs.Upstream != "" {
					if n := upstreamName(sc, hs.Upstream); n != "" {
						bv.Upstream = n
					}
				}
				if hs.Lag >= 0 {
					bv.LagSeconds = hs.Lag.Seconds()
				}
				bv.CheckLatencyMS = float64(hs.Latency.Microseconds()) / 1000
				bv.LastError = hs.LastError
				bv.LastCheck = hs.LastCheck
				bv.LastChange = hs.LastChange
				bv.Reason = hs.Reason
				bv.Failing, bv.Rising, bv.Rise, bv.Fall = hs.Failing, hs.Rising, hs.Rise, hs.Fall
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
