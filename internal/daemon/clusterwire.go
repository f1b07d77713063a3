package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
	"github.com/quorumproxy/quorumproxy/proxy"
)

// clusterSide connects the daemon to the agreement: health observations
// go in, routes come out to the proxy, hooks run for committed decisions.
type clusterSide struct {
	rt    *cluster.Runtime
	hash  string
	owned map[string]bool // active-passive services the cluster routes

	routes *queue[routeChange] // applied in order, off the Node's goroutine
	ready  chan struct{}       // closed once rt is set (or Start failed)
	wg     sync.WaitGroup

	mu     sync.Mutex
	leases map[[2]string]*routeLease

	regions map[string]string // peer -> region label (peers are fixed for the Node's life)
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
		return proxy.NoLeaseEnd // on_quorum_loss = "keep": no deadline
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

// clusterFixed is, per clustered service, what its Node reads at start and
// a reload cannot change (priorities, roles, rpo, the lag bounds): hooks
// left out, since SetHooks applies those.
func clusterFixed(cfg *config.Config) map[string]string {
	if cfg.Cluster == nil {
		return nil
	}
	ccfg, _ := clusterConfigs(cfg, "", clusterServices(cfg))
	out := make(map[string]string, len(ccfg.Services))
	for _, sc := range ccfg.Services {
		sc.Hooks = cluster.HookConfig{}
		out[sc.Name] = fmt.Sprintf("%+v", sc)
	}
	return out
}

// clusterConfigs are the cluster's and the gossip's configuration, every
// field filled from cfg (config owns the defaults; the cluster package has
// none and refuses a missing timing). Callbacks and loggers are the caller's.
func clusterConfigs(cfg *config.Config, hash string, owned map[string]bool) (cluster.Config, cluster.GossipConfig) {
	c := cfg.Cluster
	ccfg := cluster.Config{
		Name:              c.NodeName,
		LeaseTimeout:      c.LeaseTimeout,
		ClockMargin:       c.ClockDrift,
		ObservationTTL:    c.ObservationTTL(),
		VoteTimeout:       c.VoteTimeout(),
		FailedPromoteHold: c.FailedPromoteHold(),
		OnQuorumLoss:      cluster.QuorumLossClose,
	}
	if c.OnQuorumLoss == config.ActionKeep {
		ccfg.OnQuorumLoss = cluster.QuorumLossKeep
	}
	for _, s := range cfg.Services {
		if !owned[s.Name] {
			continue
		}
		sc := cluster.ServiceConfig{Name: s.Name, RoleAware: s.RoleAware(), RPOZero: s.RPO == config.RPOZero, RegionOrder: s.RegionOrder, MaxLagOnFailover: s.MaxLagOnFailover, MaxLagBytesOnFailover: s.MaxLagBytesOnFailover,
			Hooks: clusterHooks(s)}
		for _, b := range s.Backends {
			sc.Backends = append(sc.Backends, cluster.BackendConfig{Name: b.Name, Priority: b.Priority, Region: b.Region})
		}
		ccfg.Services = append(ccfg.Services, sc)
	}
	g := cluster.GossipConfig{
		Bind: c.Bind, Advertise: c.Advertise, Label: c.Label, SecretKeyFile: c.SecretKeyFile,
		Insecure: c.Insecure, ConfigHash: hash,
		GossipInterval: c.GossipInterval, ProbeInterval: c.ProbeInterval, RejoinInterval: c.RejoinInterval,
		WAN: c.Network == config.NetworkWAN,
	}
	for _, p := range c.Peers {
		g.Peers = append(g.Peers, cluster.Peer{Name: p.Name, Address: p.Address})
		ccfg.Peers = append(ccfg.Peers, p.Name)
	}
	return ccfg, g
}

// members are the cluster's members with their configured region labels.
func (cs *clusterSide) members() []cluster.Member {
	ms := cs.rt.Members()
	for i := range ms {
		ms[i].Region = cs.regions[ms[i].Name]
	}
	return ms
}

func startCluster(cfg *config.Config, d *Daemon) (*clusterSide, error) {
	cs := &clusterSide{hash: clusterHash(cfg), owned: clusterServices(cfg),
		routes: newQueue[routeChange](), ready: make(chan struct{}), leases: map[[2]string]*routeLease{}, regions: map[string]string{}}
	for _, p := range cfg.Cluster.Peers {
		cs.regions[p.Name] = p.Region
	}
	ccfg, g := clusterConfigs(cfg, cs.hash, cs.owned)
	ccfg.Logger = d.log.With("component", "cluster")
	g.Logger = d.log.With("component", "gossip")
	// The Node calls these on its own goroutine, and they must not block
	// it: onRecord and onClusterAction only queue work for the hook runner
	// (dropping it, said in the log, when a service's queue is full), and
	// OnRoute only queues the route for applyRoutes.
	ccfg.OnRecord = d.onRecord
	ccfg.OnAction = d.onClusterAction
	// The route applier must run before the Node can call OnRoute.
	cs.wg.Add(1)
	go cs.applyRoutes(d.px, d.log, d.failover, d.repoint.poke)
	rt, err := cluster.Start(ccfg, g, cfg.Cluster.StateDir, cluster.NodeOptions{
		OnRoute: func(service, backend string) { cs.routes.put(routeChange{service, backend}) },
	})
	if err != nil {
		close(cs.ready)
		cs.routes.close()
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
func (cs *clusterSide) applyRoutes(px *proxy.Proxy, log *slog.Logger, fo *failoverClock, routed func(service string)) {
	defer cs.wg.Done()
	<-cs.ready
	current := map[string]string{}
	lost := map[[2]string]uint64{} // lease-lost sessions already counted, per service and backend
	for {
		rc, ok := cs.routes.take()
		if !ok {
			return
		}
		prev := current[rc.service]
		current[rc.service] = rc.backend
		var lease proxy.Lease
		if rc.backend != "" {
			lease = cs.lease(rc.service, rc.backend)
		}
		// Close the old primary's sessions before SetRoute, which would
		// close them uncounted (it closes only what slips in between), and
		// count those the data plane closed itself when the lease ran out.
		n := 0
		if prev != "" && prev != rc.backend {
			n = px.CloseSessions(rc.service, prev)
			k := [2]string{rc.service, prev}
			total := px.LeaseLost(rc.service, prev)
			n += int(total - lost[k])
			lost[k] = total
		}
		px.SetRoute(rc.service, rc.backend, lease)
		fo.routedTo(rc.service, rc.backend, time.Now())
		routed(rc.service)
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

func (cs *clusterSide) observe(s health.State, mask uint64, upstream string) {
	if !cs.owned[s.Service] || s.Status == health.StatusUnknown {
		return
	}
	cs.rt.Observe(s.Service, s.Backend, cluster.Observation{Up: s.Status == health.StatusUp, Role: clusterRole(s.Role),
		LagBytes: s.LagBytes, Lag: s.Lag, Position: s.Position, PositionFresh: s.PositionFresh, SyncMask: mask, Upstream: upstream,
		ReplicasUnread: s.ReplicasUnread, Rising: s.Rising > 0})
}

// close leaves the cluster and stops the route applier.
func (cs *clusterSide) close() {
	cs.rt.Close()
	cs.routes.close()
	cs.wg.Wait()
}

// onRecord runs on the Node's goroutine for every new record this proxy
// commits or adopts: the notify hook runs on every proxy. It must not
// block: it logs and queues the hook (dropped, and logged, when the
// service's hook queue is full).
func (d *Daemon) onRecord(service string, old, new cluster.Record) {
	d.log.Info("cluster: new record", "service", service, "epoch", new.Epoch, "primary", new.Primary, "fenced", string(new.Fenced),
		"old_epoch", old.Epoch, "old_primary", old.Primary)
	d.note(journal.Entry{Service: service, Kind: "record", Epoch: new.Epoch, Summary: recordReason(old, new)})
	d.repoint.recordChanged(service, new)
	if old.Primary != "" && new.Primary != old.Primary {
		failovers.WithLabelValues(service).Inc()
	}
	svc := d.serviceConfig(service)
	if svc != nil && svc.Role == config.RolePrimary && new.Primary != old.Primary && new.Primary != "" {
		select {
		case <-d.ready:
			// Another proxy may be promoting it: see the promotion as soon
			// as it lands rather than at the next check (an interval later).
			d.mon.Expect(service, new.Primary, health.RolePrimary, expectPromotionWithin(svc))
		default: // records recovered at start: the first checks come at once anyway
		}
	}
	if svc == nil || len(svc.Hooks.Notify) == 0 {
		return
	}
	env := hookEnv(svc, old.Primary, new.Primary, recordReason(old, new))
	env["QP_EPOCH"] = strconv.FormatUint(new.Epoch, 10)
	d.hooks.enqueue(service, func() {
		_ = d.hooks.runOne(service, "notify", svc.Hooks.Notify, env, svc.Hooks.Timeout)
	})
}

// expectPromotionWithin bounds the fast checks of a new primary that still
// reports replica: the promote hook's timeout and a check, at most 30s.
func expectPromotionWithin(svc *config.Service) time.Duration {
	return min(svc.Hooks.Timeout+svc.Health.Interval, 30*time.Second)
}

// recordReason says in words what a new record changed, the same on every
// proxy (the ones that adopt it do not know why it was proposed).
func recordReason(old, new cluster.Record) string {
	grown, shrunk := fencedDiff(new.Fenced.List(), old.Fenced.List()), fencedDiff(old.Fenced.List(), new.Fenced.List())
	var why string
	switch {
	case old.Primary == "":
		why = fmt.Sprintf("first primary of the cluster: %s", new.Primary)
	case old.Primary != new.Primary:
		why = fmt.Sprintf("primary moved from %s to %s", old.Primary, new.Primary)
	case len(grown) > 0:
		why = fmt.Sprintf("%s fenced; primary stays %s", strings.Join(grown, ", "), new.Primary)
	case len(shrunk) > 0:
		why = fmt.Sprintf("%s unfenced; primary stays %s", strings.Join(shrunk, ", "), new.Primary)
	case new.Paused && !old.Paused:
		why = fmt.Sprintf("paused: no automatic failover until resumed; primary stays %s", new.Primary)
	case old.Paused && !new.Paused:
		why = fmt.Sprintf("resumed: automatic failover again; primary stays %s", new.Primary)
	default:
		why = fmt.Sprintf("primary %s decided again", new.Primary)
	}
	if old.Primary != "" && old.Primary != new.Primary && slices.Contains(grown, old.Primary) {
		why += fmt.Sprintf(" (%s fenced)", old.Primary)
	}
	return fmt.Sprintf("%s, epoch %d", why, new.Epoch)
}

// fencedDiff is what a holds that b does not.
func fencedDiff(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// clusterHooks is what the agreement needs to know of a service's hooks.
func clusterHooks(s config.Service) cluster.HookConfig {
	return cluster.HookConfig{Fence: len(s.Hooks.Fence) > 0, Promote: len(s.Hooks.Promote) > 0, Timeout: s.Hooks.Timeout}
}

// onClusterAction runs on the Node's goroutine when this proxy, holding a
// lease at the epoch it committed, acts on a database: the hook runs on
// the service's queue, the backend is checked at once, and the Node hears
// how it ended. It must not block: ActionDone goes through the Node's inbox.
func (d *Daemon) onClusterAction(service string, a cluster.Action) {
	report := func(r cluster.ActionResult) {
		<-d.ready
		if d.cluster == nil {
			return // New failed: nobody to report to
		}
		if err := d.cluster.rt.ActionDone(service, a, r); err != nil {
			d.log.Warn("cluster: action result", "service", service, "epoch", a.Epoch, "action", a.Kind.String(), "err", err)
		}
	}
	svc := d.serviceConfig(service)
	if svc == nil {
		go report(cluster.ActionResult{})
		return
	}
	run := func() {
		<-d.ready
		if d.mon == nil {
			return // New failed before the checks started
		}
		r := d.runAction(svc, a)
		report(r)
		// The proxy that promoted makes the others follow the new primary
		// (once it reports primary: a promote that did not verify may
		// still land). Without roles, only after a hook that worked.
		if a.Kind == cluster.ActionPromote && (svc.RoleAware() || r.OK) {
			d.repoint.start(service, a.Backend, a.Epoch)
		}
	}
	if !d.hooks.enqueue(service, run) {
		go report(cluster.ActionResult{Ran: true, Detail: "hook queue full"})
	}
}

// runAction runs one action's hook with the epoch as fencing token and
// checks the backend right after: a promote is skipped when the backend
// already reports primary, and judged by the role it reports afterwards.
func (d *Daemon) runAction(svc *config.Service, a cluster.Action) cluster.ActionResult {
	timeout := svc.Hooks.Timeout // positive: config checked it
	res := cluster.ActionResult{Timeout: timeout}
	env := hookEnv(svc, a.Old, a.New, "cluster decision")
	env["QP_EPOCH"] = strconv.FormatUint(a.Epoch, 10)
	env["QP_ACTION"] = a.Kind.String()
	env["QP_BACKEND"], env["QP_ADDRESS"] = a.Backend, backendAddress(svc, a.Backend)
	var argv []string
	switch a.Kind {
	case cluster.ActionFence:
		argv = svc.Hooks.Fence
		// A fence hook fences QP_OLD_BACKEND, whichever backend it is.
		env["QP_OLD_BACKEND"], env["QP_OLD_ADDRESS"] = a.Backend, env["QP_ADDRESS"]
	case cluster.ActionPromote:
		argv = svc.Hooks.Promote
		if up, role := d.checkNow(svc.Name, a.Backend); up && role == cluster.RolePrimary {
			d.log.Info("promote hook skipped: the backend already reports primary", "service", svc.Name, "backend", a.Backend, "epoch", a.Epoch)
			res.Skipped, res.Up, res.Role = true, up, role
			return res
		}
	}
	if len(argv) > 0 {
		res.Ran = true
		if err := d.hooks.runOne(svc.Name, a.Kind.String(), argv, env, timeout); err != nil {
			res.Detail = err.Error()
			res.NotStarted = hookNotStarted(err)
		} else {
			res.OK = true
		}
	}
	res.Up, res.Role = d.checkNow(svc.Name, a.Backend)
	return res
}

// checkNow checks a backend at once; up is false unless that check
// succeeded.
func (d *Daemon) checkNow(service, backend string) (up bool, role cluster.Role) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := d.mon.CheckNow(ctx, service, backend)
	if err != nil || st.Status != health.StatusUp || st.LastError != "" {
		return false, cluster.RoleUnknown
	}
	return true, clusterRole(st.Role)
}

func clusterRole(r health.Role) cluster.Role {
	switch r {
	case health.RolePrimary:
		return cluster.RolePrimary
	case health.RoleReplica:
		return cluster.RoleReplica
	}
	return cluster.RoleUnknown
}

func (d *Daemon) serviceConfig(name string) *config.Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.cfg.Service(name); s != nil {
		c := *s
		return &c
	}
	return nil
}

// view is the cluster part of /status.
func (cs *clusterSide) view() *adminapi.ClusterStatus {
	st, err := cs.rt.Status()
	v := &adminapi.ClusterStatus{Node: st.Node, Peers: st.Peers, Quorum: st.Quorum, Recovering: st.Recovering,
		Reachable: st.Reachable, Members: cs.members(), Counters: st.Counters, StoreError: st.StoreError}
	if err != nil {
		v.Error = err.Error()
	}
	for _, s := range st.Services {
		sv := adminapi.ClusterService{
			Service: s.Service, Epoch: s.Record.Epoch, Primary: s.Record.Primary, Routing: s.Routing,
			Fenced: s.Record.Fenced.List(), Fencing: s.Fencing, Paused: s.Record.Paused,
			LeaseMS: float64(s.Lease.Microseconds()) / 1000, MaxVoted: s.MaxVoted,
			Proposing: s.Proposing, Votes: s.Votes, Decision: s.Decision, PromoteFailed: s.PromoteFailed,
			Alerts: s.Alerts,
		}
		if op := s.Operation; op != nil {
			sv.Operation = &adminapi.Operation{ID: op.ID, Kind: op.Kind, Backend: op.Backend, State: string(op.State), Epoch: op.Epoch, Detail: op.Detail}
		}
		v.Services = append(v.Services, sv)
	}
	return v
}
