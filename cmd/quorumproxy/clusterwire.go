package main

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/proxy"
)

// keepLease is what a route without a lease deadline (on_quorum_loss =
// "keep") reports: far beyond any write.
const keepLease = 24 * time.Hour

// clusterSide connects the daemon to the agreement: health observations
// go in, routes come out to the proxy, hooks run for committed decisions.
type clusterSide struct {
	rt    *cluster.Runtime
	hash  string
	owned map[string]bool // active-passive services the cluster routes

	routes chan routeChange // applied in order, off the Node's goroutine
	ready  chan struct{}    // closed once rt is set (or Start failed)
	wg     sync.WaitGroup

	mu     sync.Mutex
	leases map[[2]string]*routeLease
}

type routeChange struct{ service, backend string }

// routeLease is the proxy's view of the cluster lease for one (service,
// backend). It stays valid only while the Node routes the service to that
// backend, so sessions dialled under an older route stop at once.
type routeLease struct {
	node             *cluster.Runtime
	service, backend string
}

func (l *routeLease) Remaining() time.Duration {
	b, rem := l.node.Route(l.service)
	switch {
	case b != l.backend:
		return 0
	case rem == 0:
		return keepLease // on_quorum_loss = "keep": no deadline
	}
	return rem
}

// clusterServices are the services the agreement owns: active-passive ones
// that route to one backend at a time (replica reads are balanced locally).
func clusterServices(cfg *config.Config) map[string]bool {
	owned := map[string]bool{}
	if cfg.Cluster == nil {
		return owned
	}
	for _, s := range cfg.Services {
		if s.Mode == config.ModeActivePassive && s.Role != config.RoleReplica {
			owned[s.Name] = true
		}
	}
	return owned
}

// clusterHash identifies what every proxy of the cluster must agree on: the
// peer list and the backends of the services the cluster owns.
func clusterHash(cfg *config.Config) string {
	if cfg.Cluster == nil {
		return ""
	}
	owned := clusterServices(cfg)
	var parts []string
	for _, s := range cfg.Services {
		if owned[s.Name] {
			parts = append(parts, s.BackendsHash())
		}
	}
	sort.Strings(parts)
	h := sha256.New()
	h.Write([]byte(cfg.Cluster.PeersHash()))
	for _, p := range parts {
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

func startCluster(cfg *config.Config, d *daemon) (*clusterSide, error) {
	c := cfg.Cluster
	cs := &clusterSide{hash: clusterHash(cfg), owned: clusterServices(cfg),
		routes: make(chan routeChange, 1024), ready: make(chan struct{}), leases: map[[2]string]*routeLease{}}
	ccfg := cluster.Config{
		Name:         c.NodeName,
		LeaseTimeout: c.LeaseTimeout,
		ClockMargin:  c.ClockDrift,
		Logger:       d.log.With("component", "cluster"),
		OnRecord:     func(service string, old, new cluster.Record) { d.onRecord(service, old, new) },
		OnHook:       func(service string, in cluster.HookIntent) { d.onClusterHook(service, in) },
	}
	if c.OnQuorumLoss == config.ActionKeep {
		ccfg.OnQuorumLoss = cluster.QuorumLossKeep
	}
	for _, s := range cfg.Services {
		if !cs.owned[s.Name] {
			continue
		}
		sc := cluster.ServiceConfig{Name: s.Name, RoleAware: s.Health.Kind.RoleAware(), MaxLagOnFailover: s.MaxLagBytesOnFailover}
		for _, b := range s.Backends {
			sc.Backends = append(sc.Backends, cluster.BackendConfig{Name: b.Name, Priority: b.Priority})
		}
		ccfg.Services = append(ccfg.Services, sc)
	}
	g := cluster.GossipConfig{
		Bind: c.Bind, Advertise: c.Advertise, Label: c.Label, SecretKeyFile: c.SecretKeyFile,
		Insecure: c.Insecure, ConfigHash: cs.hash, Logger: d.log.With("component", "gossip"),
	}
	// Test hooks: shrink gossip timers without a config key operators would misuse.
	if v, err := time.ParseDuration(os.Getenv("QP_TEST_GOSSIP_INTERVAL")); err == nil {
		g.GossipInterval, g.ProbeInterval, g.RejoinInterval = v, 5*v, 10*v
	}
	for _, p := range c.Peers {
		g.Peers = append(g.Peers, cluster.Peer{Name: p.Name, Address: p.Address})
	}
	// The route applier must run before the Node can call OnRoute.
	cs.wg.Add(1)
	go cs.applyRoutes(d.px, d.log)
	rt, err := cluster.Start(ccfg, g, c.StateDir, cluster.NodeOptions{
		OnRoute: func(service, backend string) { cs.routes <- routeChange{service, backend} },
	})
	if err != nil {
		close(cs.ready)
		close(cs.routes)
		cs.wg.Wait()
		return nil, err
	}
	cs.mu.Lock()
	cs.rt = rt
	cs.mu.Unlock()
	close(cs.ready)
	return cs, nil
}

// applyRoutes hands the Node's route changes to the proxy in order. Safety
// does not depend on how quickly this runs: the data path asks the Node's
// lease (an atomic) before every dial and write.
func (cs *clusterSide) applyRoutes(px *proxy.Proxy, log *slog.Logger) {
	defer cs.wg.Done()
	<-cs.ready
	current := map[string]string{}
	for rc := range cs.routes {
		prev := current[rc.service]
		current[rc.service] = rc.backend
		var lease proxy.Lease
		if rc.backend != "" {
			lease = cs.lease(rc.service, rc.backend)
		}
		// Close the old primary's sessions before SetRoute, which would
		// close them uncounted (it closes only what slips in between).
		n := 0
		if prev != "" && prev != rc.backend {
			n = px.CloseSessions(rc.service, prev)
		}
		px.SetRoute(rc.service, rc.backend, lease)
		if prev != "" && prev != rc.backend {
			log.Info("cluster: route changed", "service", rc.service, "from", prev, "to", rc.backend, "sessions_closed", n)
		} else {
			log.Info("cluster: route", "service", rc.service, "backend", rc.backend)
		}
	}
}

func (cs *clusterSide) lease(service, backend string) *routeLease {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	k := [2]string{service, backend}
	l := cs.leases[k]
	if l == nil {
		l = &routeLease{node: cs.rt, service: service, backend: backend}
		cs.leases[k] = l
	}
	return l
}

func (cs *clusterSide) observe(s health.State) {
	if !cs.owned[s.Service] || s.Status == health.StatusUnknown {
		return
	}
	role := cluster.RoleUnknown
	switch s.Role {
	case health.RolePrimary:
		role = cluster.RolePrimary
	case health.RoleReplica:
		role = cluster.RoleReplica
	}
	cs.rt.Observe(s.Service, s.Backend, s.Status == health.StatusUp, role, s.LagBytes)
}

// close leaves the cluster and stops the route applier.
func (cs *clusterSide) close() {
	cs.rt.Close()
	close(cs.routes)
	cs.wg.Wait()
}

// onRecord runs on the Node's goroutine for every new record this proxy
// commits or adopts: the notify hook runs on every proxy.
func (d *daemon) onRecord(service string, old, new cluster.Record) {
	d.log.Info("cluster: new record", "service", service, "epoch", new.Epoch, "primary", new.Primary, "fenced", string(new.Fenced),
		"old_epoch", old.Epoch, "old_primary", old.Primary)
	svc := d.serviceConfig(service)
	if svc == nil || len(svc.Hooks.Notify) == 0 {
		return
	}
	env := hookEnv(svc, old.Primary, new.Primary, "cluster record")
	env["QP_EPOCH"] = strconv.FormatUint(new.Epoch, 10)
	d.hooks.enqueue(service, func() {
		_ = d.hooks.runOne(service, "notify", svc.Hooks.Notify, env, svc.Hooks.Timeout)
	})
}

// onClusterHook runs on the Node's goroutine when this proxy committed a
// decision and holds a lease at its epoch: fence, then promote, with the
// epoch as a fencing token, then tell the Node they ran.
func (d *daemon) onClusterHook(service string, in cluster.HookIntent) {
	svc := d.serviceConfig(service)
	done := func() {
		if err := d.cluster.rt.HookDone(service, in.Epoch); err != nil {
			d.log.Warn("cluster: hook done", "service", service, "epoch", in.Epoch, "err", err)
		}
	}
	if svc == nil {
		go done()
		return
	}
	env := hookEnv(svc, in.Fence, in.Promote, "cluster decision")
	env["QP_EPOCH"] = strconv.FormatUint(in.Epoch, 10)
	d.hooks.enqueue(service, func() {
		if in.Fence != "" && len(svc.Hooks.Fence) > 0 {
			// A failed fence is logged and counted; the promotion still runs,
			// since the fenced backend already gets no traffic from any proxy.
			_ = d.hooks.runOne(service, "fence", svc.Hooks.Fence, env, svc.Hooks.Timeout)
		}
		if in.Promote != "" && len(svc.Hooks.Promote) > 0 {
			if err := d.hooks.runOne(service, "promote", svc.Hooks.Promote, env, svc.Hooks.Timeout); err != nil {
				// The cluster moves on to the next candidate at the next epoch.
				if ferr := d.cluster.rt.HookFailed(service, in.Epoch, err.Error()); ferr != nil {
					d.log.Warn("cluster: hook failed report", "service", service, "epoch", in.Epoch, "err", ferr)
				}
				return
			}
		}
		done()
	})
}

func (d *daemon) serviceConfig(name string) *config.Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := findService(d.cfg, name); s != nil {
		c := *s
		return &c
	}
	return nil
}

// clusterView is the cluster part of /status.
type clusterView struct {
	Node       string               `json:"node"`
	Peers      int                  `json:"peers"`
	Quorum     int                  `json:"quorum"`
	Recovering bool                 `json:"recovering"`
	Reachable  []string             `json:"reachable"`
	Members    []cluster.Member     `json:"members"`
	Services   []clusterServiceView `json:"services"`
	Counters   cluster.Counters     `json:"counters"`
	Error      string               `json:"error,omitempty"`
}

type clusterServiceView struct {
	Service string `json:"service"`
	Epoch   uint64 `json:"epoch"`
	Primary string `json:"primary"`
	// Fenced lists the backends no failover may pick until an operator
	// unfences them; Fencing is an operator's fence or unfence in flight.
	Fenced  []string `json:"fenced,omitempty"`
	Fencing string   `json:"fencing,omitempty"`
	// Routing is the backend this proxy forwards new clients to now: the
	// cluster's leased route, unless the proxy holds it back locally
	// (Held says why: quarantined, awaiting promotion, lease expired).
	Routing   string  `json:"routing"`
	Held      string  `json:"held,omitempty"`
	LeaseMS   float64 `json:"lease_ms"` // remaining; <= 0: no lease
	MaxVoted  uint64  `json:"max_voted"`
	Proposing uint64  `json:"proposing,omitempty"`
	Votes     int     `json:"votes,omitempty"`
	Decision  string  `json:"decision,omitempty"`
	// PromoteFailed lists backends held out after a failed promote hook.
	PromoteFailed []string `json:"promote_failed,omitempty"`
}

func (cs *clusterSide) view() *clusterView {
	st, err := cs.rt.Status()
	v := &clusterView{Node: st.Node, Peers: st.Peers, Quorum: st.Quorum, Recovering: st.Recovering,
		Reachable: st.Reachable, Members: cs.rt.Members(), Counters: st.Counters}
	if err != nil {
		v.Error = err.Error()
	}
	for _, s := range st.Services {
		v.Services = append(v.Services, clusterServiceView{
			Service: s.Service, Epoch: s.Record.Epoch, Primary: s.Record.Primary, Routing: s.Routing,
			Fenced: s.Record.Fenced.List(), Fencing: s.Fencing,
			LeaseMS: float64(s.Lease.Microseconds()) / 1000, MaxVoted: s.Promised,
			Proposing: s.Proposing, Votes: s.Votes, Decision: s.Decision, PromoteFailed: s.PromoteFailed,
		})
	}
	return v
}
