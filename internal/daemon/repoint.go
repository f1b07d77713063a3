package daemon

// Replicas follow the new primary. After a failover or a switchover the
// proxy that promoted the new primary (in a cluster: the one that ran the
// promote action; alone: the proxy itself, after its promote) makes every
// other backend of the service replicate from it: Redis built in (INFO
// replication, then REPLICAOF, as Sentinel does), any other kind through
// the service's repoint hook. The old primary is repointed once it is back
// up. What it acts on is what the daemon already knows: the record (or the
// target), the lease, the fenced backends and the health states.

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/internal/journal"
	"github.com/quorumproxy/quorumproxy/internal/repoint"
	"github.com/quorumproxy/quorumproxy/proxy"
)

// repointVerify is how often a Redis replica already repointed is read
// again (INFO replication), so that one found following another server
// again is repointed again (Sentinel reads INFO every 10s too).
const repointVerify = 10 * time.Second

// repointHold is how long a round waits after its primary did not answer
// as primary to a check made just before acting.
const repointHold = time.Second

// repointRecheck bounds how long a round waits without news before it
// looks at the service again (a lease regained says nothing to it).
const repointRecheck = 10 * time.Second

// repointer holds one round per service: the replicas to make follow the
// service's new primary, and how far each is.
type repointer struct {
	d   *Daemon
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	rounds  map[string]*round
	records map[string]cluster.Record // in a cluster: the last record per service
}

// round is the work after one promote: every other backend of the service
// follows primary. It ends when another one replaces it (the next
// promote) or, in a cluster, when the record's primary changes.
type round struct {
	service, primary string
	epoch            uint64 // the promote's epoch (0 alone): QP_EPOCH
	since            uint64 // the record's Since at the start (cluster)
	started          time.Time
	wake             chan struct{}
	ctx              context.Context
	cancel           context.CancelFunc

	mu sync.Mutex
	// holdUntil: no pass before (the primary did not answer as primary
	// when a pass last checked it).
	holdUntil time.Time
	b         map[string]*replicaState
	seen      map[string]backendSeen // last health seen per backend, the primary's too
}

// backendSeen is what of a health state matters to a round.
type backendSeen struct{ up, primary bool }

// replicaState is one backend's progress in a round.
type replicaState struct {
	done     bool      // follows the primary (repointed, or found so)
	fails    int       // failed attempts in a row
	next     time.Time // no attempt before (backoff)
	verifyAt time.Time // Redis: next read of a done replica
	up       bool      // last health state seen
	why      string    // why it is (again) to be repointed
}

func newRepointer(d *Daemon) *repointer {
	ctx, cancel := context.WithCancel(context.Background())
	return &repointer{d: d, log: d.log.With("component", "repoint"), ctx: ctx, cancel: cancel,
		rounds: map[string]*round{}, records: map[string]cluster.Record{}}
}

// repointMode says how a service's replicas are repointed: "hook" (its
// repoint hook), "redis" (built in) or "" (not at all).
func repointMode(svc *config.Service) string {
	switch {
	case svc.Mode != config.ModeActivePassive || svc.Role == config.RoleReplica:
		return ""
	case len(svc.Hooks.Repoint) > 0:
		return "hook"
	case svc.Health.Kind == config.KindRedis:
		return "redis"
	}
	return ""
}

// start begins a round after a promote of primary at epoch (0 alone). In
// a cluster it is called by the proxy that ran the promote action, and
// the round lasts while the record names primary with the same Since.
func (rp *repointer) start(service, primary string, epoch uint64) {
	svc := rp.d.serviceConfig(service)
	if svc == nil || repointMode(svc) == "" || primary == "" || rp.ctx.Err() != nil {
		return
	}
	var since uint64
	if rp.d.cluster != nil {
		rec, ok := rp.record(service)
		if !ok || rec.Primary != primary {
			rp.log.Debug("repoint: not started: the record names another primary", "service", service, "primary", primary, "record", rec.Primary)
			return
		}
		since = rec.Since
	}
	st, _ := rp.d.px.ServiceStatus(service)
	ctx, cancel := context.WithCancel(rp.ctx)
	r := &round{service: service, primary: primary, epoch: epoch, since: since, started: time.Now(),
		wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel, b: map[string]*replicaState{}, seen: map[string]backendSeen{}}
	for _, b := range svc.Backends {
		if b.Name == primary {
			continue
		}
		r.b[b.Name] = &replicaState{why: "the primary moved to " + primary}
	}
	for _, bs := range st.Backends {
		r.seen[bs.Name] = backendSeen{up: bs.Health.Up, primary: bs.Health.Role == proxy.RolePrimary}
		if x := r.b[bs.Name]; x != nil {
			x.up = bs.Health.Up
		}
	}
	rp.mu.Lock()
	if rp.ctx.Err() != nil {
		rp.mu.Unlock()
		cancel()
		return
	}
	if old := rp.rounds[service]; old != nil {
		if old.primary == primary && old.since == since {
			// The same decision again (a rerun of the intent; alone, the
			// same target back after none): keep what was done.
			rp.mu.Unlock()
			cancel()
			old.poke()
			return
		}
		old.cancel()
	}
	rp.rounds[service] = r
	rp.wg.Add(1)
	rp.mu.Unlock()
	rp.log.Info("repoint: replicas are to follow the new primary", "service", service, "primary", primary, "epoch", epoch,
		"how", repointMode(svc))
	go rp.run(r)
}

// record returns the service's last record: the one onRecord gave, or
// else the cluster's status.
func (rp *repointer) record(service string) (cluster.Record, bool) {
	rp.mu.Lock()
	rec, ok := rp.records[service]
	rp.mu.Unlock()
	if ok || rp.d.cluster == nil {
		return rec, ok
	}
	st, err := rp.d.cluster.rt.Status()
	if err != nil {
		return rec, false
	}
	for _, s := range st.Services {
		if s.Service == service {
			rp.mu.Lock()
			if _, ok := rp.records[service]; !ok {
				rp.records[service] = s.Record
			}
			rec = rp.records[service]
			rp.mu.Unlock()
			return rec, true
		}
	}
	return rec, false
}

// recordChanged takes a new record (the Node's goroutine: it must not
// block): a round whose primary is no longer the record's ends.
func (rp *repointer) recordChanged(service string, rec cluster.Record) {
	rp.mu.Lock()
	rp.records[service] = rec
	r := rp.rounds[service]
	if r != nil && (rec.Primary != r.primary || rec.Since != r.since) {
		delete(rp.rounds, service)
		r.cancel()
		r = nil
		rp.log.Info("repoint: the primary changed; this proxy no longer repoints the service's replicas", "service", service,
			"record", rec.Primary, "epoch", rec.Epoch)
	}
	rp.mu.Unlock()
	if r != nil {
		r.poke() // the fenced set may have changed
	}
}

// healthChanged takes a backend's new health state: one that came up is
// repointed at once (a failure's backoff notwithstanding), and one seen
// reporting primary that is not the round's primary is repointed again.
// Only a change of up or role wakes the round (lag moves on every check).
func (rp *repointer) healthChanged(s health.State) {
	rp.mu.Lock()
	r := rp.rounds[s.Service]
	rp.mu.Unlock()
	if r == nil {
		return
	}
	up := s.Status == health.StatusUp
	seen := backendSeen{up: up, primary: s.Role == health.RolePrimary}
	r.mu.Lock()
	changed := r.seen[s.Backend] != seen
	r.seen[s.Backend] = seen
	if bs := r.b[s.Backend]; bs != nil && changed {
		if up && !bs.up {
			bs.next = time.Time{}
		}
		if up && s.Role == health.RolePrimary && bs.done {
			bs.done, bs.fails, bs.next = false, 0, time.Time{}
			bs.why = "it reports primary again; the primary is " + r.primary
			rp.log.Warn("repoint: a backend that followed the primary reports primary itself: repointing it again",
				"service", s.Service, "backend", s.Backend, "primary", r.primary)
		}
		bs.up = up
	}
	r.mu.Unlock()
	if changed {
		r.poke()
	}
}

// poke makes the service's round look again (a route or target change).
func (rp *repointer) poke(service string) {
	rp.mu.Lock()
	r := rp.rounds[service]
	rp.mu.Unlock()
	if r != nil {
		r.poke()
	}
}

func (r *round) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// close ends every round; a pass in flight finishes on the hook queue
// (the hook runner waits for it).
func (rp *repointer) close() {
	rp.mu.Lock()
	rp.cancel() // under mu: no round starts after this
	rp.mu.Unlock()
	rp.wg.Wait()
}

// run waits until some backend of the round is due, then queues a pass on
// the service's hook queue (so that it never overlaps a fence or promote
// of the same service) and waits for it.
func (rp *repointer) run(r *round) {
	defer rp.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := rp.nextDue(r)
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-r.ctx.Done():
				return
			case <-r.wake:
				if !timer.Stop() {
					select {
					case <-timer.C:
					default:
					}
				}
				continue
			case <-timer.C:
				continue
			}
		}
		done := make(chan struct{})
		if !rp.d.hooks.enqueue(r.service, func() { defer close(done); rp.pass(r) }) {
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		select {
		case <-r.ctx.Done():
			return
		case <-done:
		}
	}
}

// repointView is what a round may act on now.
type repointView struct {
	svc     *config.Service
	mode    string
	address map[string]string
	up      map[string]bool
	fenced  map[string]bool
}

// view says whether the round may act now ("" when it may, else why not)
// and on what: this proxy still holds the decision (in a cluster the
// record names the round's primary and this proxy routes to it under a
// lease; alone, it is the target), and the primary reports primary.
func (rp *repointer) view(r *round) (repointView, string) {
	v := repointView{svc: rp.d.serviceConfig(r.service), address: map[string]string{}, up: map[string]bool{}, fenced: map[string]bool{}}
	if v.svc == nil {
		return v, "the service is gone"
	}
	if v.mode = repointMode(v.svc); v.mode == "" {
		return v, "the service has no repoint hook any more"
	}
	st, ok := rp.d.px.ServiceStatus(r.service)
	if !ok {
		return v, "the service is gone"
	}
	if rp.d.cluster != nil {
		rp.mu.Lock()
		rec := rp.records[r.service]
		rp.mu.Unlock()
		if rec.Primary != r.primary || rec.Since != r.since {
			return v, fmt.Sprintf("the record names %q", rec.Primary)
		}
		if b, _ := rp.d.cluster.rt.Route(r.service); b != r.primary {
			return v, "no lease routing to the primary here"
		}
		if rp.d.cluster.rt.Paused(r.service) {
			return v, "paused: no automatic action on the databases"
		}
		for _, f := range rec.Fenced.List() {
			v.fenced[f] = true
		}
	} else if st.Target != r.primary {
		return v, fmt.Sprintf("the target is %q", st.Target)
	}
	primaryOK := false
	for _, b := range st.Backends {
		v.address[b.Name] = b.Address
		v.up[b.Name] = b.Health.Up
		if rp.d.cluster == nil && b.Fenced {
			v.fenced[b.Name] = true
		}
		if b.Name == r.primary {
			primaryOK = b.Health.Up && (b.Health.Role == proxy.RolePrimary || !v.svc.RoleAware())
		}
	}
	if !primaryOK {
		return v, fmt.Sprintf("%q does not report primary (yet)", r.primary)
	}
	return v, ""
}

// due says whether a backend is to be acted on at now, and else when
// next (zero: not until something changes).
func (bs *replicaState) due(mode string, now time.Time) (bool, time.Time) {
	at := bs.next
	if bs.done {
		if mode != "redis" {
			return false, time.Time{}
		}
		at = bs.verifyAt
	}
	return !now.Before(at), at
}

// nextDue is how long the round may sleep: 0 when a pass is due now.
func (rp *repointer) nextDue(r *round) time.Duration {
	v, why := rp.view(r)
	if why != "" {
		return repointRecheck
	}
	now := time.Now()
	wait := repointRecheck
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Before(r.holdUntil) {
		return r.holdUntil.Sub(now)
	}
	for name, bs := range r.b {
		if v.fenced[name] || !v.up[name] {
			continue
		}
		due, at := bs.due(v.mode, now)
		if due {
			return 0
		}
		if !at.IsZero() {
			wait = min(wait, at.Sub(now))
		}
	}
	return max(wait, time.Millisecond)
}

// outcome is how one attempt on a backend ended.
type outcome int

const (
	followed outcome = iota // it follows the primary now (or already did)
	failed                  // retried after a backoff
	again                   // a verify found it following another server: at once
	held                    // the primary did not answer as primary: the round waits
)

// pass acts on every backend of the round that is due, one at a time,
// looking again before each whether the round may still act.
func (rp *repointer) pass(r *round) {
	for _, b := range rp.d.serviceBackends(r.service) {
		if r.ctx.Err() != nil {
			return
		}
		v, why := rp.view(r)
		if why != "" {
			rp.log.Debug("repoint: waiting", "service", r.service, "primary", r.primary, "why", why)
			return
		}
		r.mu.Lock()
		bs := r.b[b]
		act := false
		var reason string
		if bs != nil && !v.fenced[b] && v.up[b] {
			act, _ = bs.due(v.mode, time.Now())
			reason = bs.why
			if r.seen[b].primary {
				reason = "it reports primary; the primary is " + r.primary
			}
		}
		r.mu.Unlock()
		if !act {
			continue
		}
		var o outcome
		switch v.mode {
		case "redis":
			o = rp.redis(r, v, b, reason)
		case "hook":
			o = rp.hook(r, v, b, reason)
		}
		now := time.Now()
		r.mu.Lock()
		switch o {
		case followed:
			bs.done, bs.fails, bs.next = true, 0, time.Time{}
			bs.verifyAt = now.Add(repointVerify)
		case again:
			bs.done, bs.next = false, time.Time{}
		case failed:
			bs.done = false
			bs.fails++
			bs.next = now.Add(repoint.Backoff(bs.fails))
		case held:
			r.holdUntil = now.Add(repointHold)
		}
		r.mu.Unlock()
		if o == held {
			return
		}
	}
}

// primaryNow checks the round's primary at once, before a backend is made
// to follow it: the health states may be a few checks old, the primary
// may have died since, and a backend that reports primary may be the
// successor someone promoted. Only a primary that answers as primary now
// is followed.
func (rp *repointer) primaryNow(r *round, v repointView) bool {
	up, role := rp.d.checkNow(r.service, r.primary)
	if up && (role == cluster.RolePrimary || !v.svc.RoleAware()) {
		return true
	}
	rp.log.Info("repoint: waiting: the primary does not answer as primary now", "service", r.service, "primary", r.primary,
		"up", up, "role", role.String())
	return false
}

// redis repoints one Redis backend: nothing when INFO replication says it
// already follows the primary, else REPLICAOF.
func (rp *repointer) redis(r *round, v repointView, b, reason string) outcome {
	login := repoint.Redis{Spec: serviceSpec(v.svc)}
	addr, paddr := v.address[b], v.address[r.primary]
	ctx, cancel := context.WithTimeout(r.ctx, 2*max(v.svc.Health.Timeout, time.Second))
	defer cancel()
	r.mu.Lock()
	wasDone := r.b[b].done
	r.mu.Unlock()
	rep, err := login.Replication(ctx, addr)
	if err != nil {
		rp.log.Warn("repoint: INFO replication failed; retrying with backoff", "service", r.service, "backend", b, "err", err)
		return failed
	}
	if rep.Follows(paddr) {
		if !wasDone {
			rp.log.Info("repoint: already replicates from the primary", "service", r.service, "backend", b, "primary", r.primary,
				"link", rep.LinkUp)
		}
		return followed
	}
	if wasDone {
		rp.log.Warn("repoint: a replica no longer follows the primary: repointing it again", "service", r.service, "backend", b,
			"primary", r.primary, "found", rep.String())
		r.mu.Lock()
		r.b[b].why = "found as " + rep.String()
		r.mu.Unlock()
		return again
	}
	if !rp.primaryNow(r, v) {
		return held
	}
	found := rep.String()
	err = login.ReplicaOf(ctx, addr, paddr)
	after := time.Since(r.started).Round(time.Millisecond)
	result := "OK"
	if err != nil {
		result = err.Error()
	}
	summary := fmt.Sprintf("REPLICAOF %s on %s (%s; was %s) %v after the promote: %s", paddr, b, reason, found, after, result)
	rp.d.note(journal.Entry{Service: r.service, Kind: "repoint", Epoch: r.epoch, Result: result, Summary: summary})
	if err != nil {
		rp.log.Warn("repoint: REPLICAOF failed; retrying with backoff", "service", r.service, "backend", b, "primary", r.primary, "err", err)
		return failed
	}
	rp.log.Info("repoint: replica now follows the new primary", "service", r.service, "backend", b, "primary", r.primary,
		"was", found, "since_promote", after, "epoch", r.epoch)
	return followed
}

// hook runs the repoint hook for one backend.
func (rp *repointer) hook(r *round, v repointView, b, reason string) outcome {
	if !rp.primaryNow(r, v) {
		return held
	}
	env := map[string]string{
		"QP_SERVICE": r.service, "QP_EVENT": "repoint", "QP_ACTION": "repoint", "QP_EPOCH": strconv.FormatUint(r.epoch, 10),
		"QP_BACKEND": b, "QP_ADDRESS": v.address[b], "QP_NEW_BACKEND": r.primary, "QP_NEW_ADDRESS": v.address[r.primary],
		"QP_REASON": fmt.Sprintf("%s is to replicate from %s: %s", b, r.primary, reason),
	}
	if err := rp.d.hooks.runOne(r.service, "repoint", v.svc.Hooks.Repoint, env, v.svc.Hooks.Timeout); err != nil {
		return failed
	}
	rp.log.Info("repoint: hook ran: the backend follows the new primary", "service", r.service, "backend", b, "primary", r.primary,
		"since_promote", time.Since(r.started).Round(time.Millisecond), "epoch", r.epoch)
	return followed
}

// serviceBackends lists a service's backends in config order.
func (d *Daemon) serviceBackends(service string) []string {
	svc := d.serviceConfig(service)
	if svc == nil {
		return nil
	}
	out := make([]string, len(svc.Backends))
	for i, b := range svc.Backends {
		out[i] = b.Name
	}
	return out
}

// serviceSpec is the service's health check spec: its login (password,
// user, TLS material read from their files now).
func serviceSpec(svc *config.Service) health.Spec {
	ts := healthTargets(&config.Config{Services: []config.Service{*svc}})
	if len(ts) == 0 {
		return health.Spec{}
	}
	return ts[0].Spec
}
