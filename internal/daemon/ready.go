package daemon

// Readiness for whatever sits in front of the proxy (keepalived, a cloud
// load balancer, a Kubernetes probe): GET /health for the whole proxy and
// GET /health/SERVICE for one service, 200 or 503 with the reason, in the
// style of Patroni's /primary. A proxy cut off from the majority still
// accepts TCP until switch_hold ends; these say so at once.

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/proxy"
)

// notRoutingListed bounds the services GET /health names as not routing.
const notRoutingListed = 10

func (d *Daemon) handleHealth(w http.ResponseWriter, r *http.Request) {
	rd, code := d.proxyReadiness()
	writeReadiness(w, rd, code)
}

func (d *Daemon) handleServiceHealth(w http.ResponseWriter, r *http.Request) {
	rd, code := d.serviceReadiness(r.PathValue("service"))
	writeReadiness(w, rd, code)
}

func writeReadiness(w http.ResponseWriter, rd adminapi.Readiness, code int) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(rd)
}

// serviceReadiness is ready while a new connection of the service would
// be forwarded now: in a cluster, to the backend this proxy holds a lease
// for; alone, to its target; balanced, to any eligible backend.
func (d *Daemon) serviceReadiness(name string) (adminapi.Readiness, int) {
	rd := adminapi.Readiness{Service: name}
	if d.stopping.Load() {
		rd.Reason = "stopping: draining its connections"
		return rd, http.StatusServiceUnavailable
	}
	ps, ok := d.px.ServiceStatus(name)
	if !ok {
		rd.Reason = fmt.Sprintf("no service named %q", name)
		return rd, http.StatusNotFound
	}
	rd.Backends, rd.Reason = routesOf(ps)
	rd.Paused = d.paused(name)
	if len(rd.Backends) > 0 {
		rd.Ready = true
		return rd, http.StatusOK
	}
	if why := d.clusterNotReady(); why != "" && d.cluster.owned[name] {
		rd.Reason = why + " (" + rd.Reason + ")"
	}
	if rd.Paused {
		rd.Reason = "paused, so no automatic failover: " + rd.Reason
	}
	return rd, http.StatusServiceUnavailable
}

// proxyReadiness is ready while the proxy serves: not stopping, every
// service listening and, in a cluster, state recovered, state_dir writable
// and a quorum reachable. A service with no backend to go to does not make
// the proxy unready (no other proxy could do better); it is named.
func (d *Daemon) proxyReadiness() (adminapi.Readiness, int) {
	var rd adminapi.Readiness
	if d.stopping.Load() {
		rd.Reason = "stopping: draining its connections"
		return rd, http.StatusServiceUnavailable
	}
	for _, ps := range d.px.Status() {
		rd.Services++
		if ps.ListenError != "" && rd.Reason == "" {
			rd.Reason = fmt.Sprintf("service %q is not listening: %s", ps.Name, ps.ListenError)
		}
		switch bs, why := routesOf(ps); {
		case len(bs) > 0:
			rd.Routing++
			if rd.RoutingTo == nil {
				rd.RoutingTo = map[string]int{}
			}
			for _, b := range bs {
				rd.RoutingTo[b]++
			}
		case len(rd.NotRouting) < notRoutingListed:
			if rd.NotRouting == nil {
				rd.NotRouting = map[string]string{}
			}
			rd.NotRouting[ps.Name] = why
		}
	}
	if why := d.clusterNotReady(); why != "" {
		rd.Reason = why
	}
	if rd.Reason != "" {
		return rd, http.StatusServiceUnavailable
	}
	rd.Ready = true
	return rd, http.StatusOK
}

// clusterNotReady says why this proxy cannot take part in the cluster now
// ("" when it can, or without a cluster).
func (d *Daemon) clusterNotReady() string {
	if d.cluster == nil {
		return ""
	}
	st, err := d.cluster.rt.Status()
	switch {
	case err != nil:
		return "cluster: " + err.Error()
	case st.Recovering:
		return adminapi.ReasonRecovering
	case st.StoreError != "":
		return "state_dir cannot be written (" + st.StoreError + "): not voting or routing"
	case len(st.Reachable)+1 < st.Quorum:
		return fmt.Sprintf("lost quorum: reaches %d of %d proxies (itself included), needs %d", len(st.Reachable)+1, st.Peers, st.Quorum)
	}
	return ""
}

// paused reports whether a clustered service's automatic decisions are
// paused (lock-free: a probe per service may come every second).
func (d *Daemon) paused(service string) bool {
	return d.cluster != nil && d.cluster.owned[service] && d.cluster.rt.Paused(service)
}

// routesOf is where a new connection of the service goes now, or why
// nowhere.
func routesOf(ps proxy.ServiceStatus) ([]string, string) {
	if ps.ListenError != "" {
		return nil, "not listening: " + ps.ListenError
	}
	var bs []string
	for _, b := range ps.Backends {
		if b.Eligible {
			bs = append(bs, b.Name)
		}
	}
	if len(bs) > 0 {
		return bs, ""
	}
	if ps.Reason != "" {
		return nil, ps.Reason
	}
	return nil, "no backend it may forward to"
}
