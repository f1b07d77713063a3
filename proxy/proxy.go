package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy runs the services' listeners and proxies their connections.
type Proxy struct {
	log      *slog.Logger
	onTarget func(TargetChange)

	ctx    context.Context // cancelled by Close and by an expired Drain
	cancel context.CancelFunc

	mu       sync.Mutex // guards services, draining, closed, inherited
	services map[string]*service
	draining bool
	closed   bool
	// inherited are the listening sockets of Options.Inherited no service
	// has taken yet; the first Apply closes what is left.
	inherited map[string][]int
	stopOnce  sync.Once

	poller    *poller // nil: idle directions wait on goroutines
	parkAfter time.Duration
	plane     // the data plane's own state (event loops on Linux)

	closing   atomic.Bool  // set before sessions are swept, so none escapes
	accessLog atomic.Bool  // Options.AccessLog, SetAccessLog
	active    atomic.Int64 // client connections, all services
	wg        sync.WaitGroup

	evMu   sync.Mutex
	evCond *sync.Cond
	evQ    []TargetChange
	evStop bool
	evWG   sync.WaitGroup
}

// New returns a Proxy with no services; Apply starts them.
func New(opts Options) *Proxy {
	p := &Proxy{log: opts.Logger, onTarget: opts.OnTarget, services: map[string]*service{}}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.parkAfter = DefaultParkAfter
	if opts.parkAfter != 0 {
		p.parkAfter = opts.parkAfter
	}
	p.accessLog.Store(opts.AccessLog)
	p.inherited = map[string][]int{}
	for addr, fds := range opts.Inherited {
		p.inherited[addr] = append([]int(nil), fds...)
	}
	p.startPlane(opts)
	p.evCond = sync.NewCond(&p.evMu)
	if p.onTarget != nil {
		p.evWG.Add(1)
		go p.notifyLoop()
	}
	return p
}

// SetAccessLog turns the per-connection access log on or off (a reload).
func (p *Proxy) SetAccessLog(on bool) { p.accessLog.Store(on) }

// notifyLoop delivers target changes in order, outside every lock.
func (p *Proxy) notifyLoop() {
	defer p.evWG.Done()
	p.evMu.Lock()
	for {
		for len(p.evQ) == 0 && !p.evStop {
			p.evCond.Wait()
		}
		if p.evStop {
			p.evMu.Unlock()
			return
		}
		ev := p.evQ[0]
		p.evQ = p.evQ[1:]
		p.evMu.Unlock()
		p.onTarget(ev)
		p.evMu.Lock()
	}
}

func (p *Proxy) emit(ev *TargetChange) {
	if ev == nil || p.onTarget == nil {
		return
	}
	p.evMu.Lock()
	p.evQ = append(p.evQ, *ev)
	p.evMu.Unlock()
	p.evCond.Signal()
}

// Apply starts, changes and removes services to match cfgs; it is both the
// initial start and a reload. Sessions of unchanged backends keep running;
// sessions of a removed backend or service, or of a backend whose address
// changed, are closed. A service that cannot listen is kept (so health and
// routes still apply, and the next Apply retries) and its error is
// returned, joined with the others; the rest keep serving.
func (p *Proxy) Apply(cfgs []ServiceConfig) error {
	if err := validate(cfgs); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.draining {
		return errors.New("proxy: apply after drain or close")
	}
	want := map[string]bool{}
	for _, c := range cfgs {
		want[c.Name] = true
	}
	// Removals first, so a listen address can pass to another service.
	for name, s := range p.services {
		if !want[name] {
			p.removeService(s)
			delete(p.services, name)
		}
	}
	var errs []error
	for _, c := range cfgs {
		s := p.services[c.Name]
		if s == nil {
			s = p.newService(c)
			p.services[c.Name] = s
		}
		if err := p.updateService(s, c); err != nil {
			errs = append(errs, err)
		}
	}
	// A socket handed over for an address no service listens on any
	// more would queue clients nobody accepts.
	p.closeInherited()
	return errors.Join(errs...)
}

// takeInherited returns the handed-over sockets for listen address addr
// (as configured), now owned by the caller; call with p.mu held.
func (p *Proxy) takeInherited(addr string) []int {
	fds := p.inherited[addr]
	delete(p.inherited, addr)
	return fds
}

// closeInherited closes the handed-over sockets no service took; call
// with p.mu held.
func (p *Proxy) closeInherited() {
	for addr, fds := range p.inherited {
		closeFDs(fds)
		delete(p.inherited, addr)
	}
}

func validate(cfgs []ServiceConfig) error {
	var errs []error
	names := map[string]bool{}
	for i, c := range cfgs {
		if c.Name == "" {
			errs = append(errs, fmt.Errorf("service #%d: empty name", i))
			continue
		}
		if names[c.Name] {
			errs = append(errs, fmt.Errorf("service %q: duplicate name", c.Name))
		}
		names[c.Name] = true
		if err := planeSupports(&c); err != nil {
			errs = append(errs, fmt.Errorf("service %q: %w", c.Name, err))
		}
		bn := map[string]bool{}
		for j, b := range c.Backends {
			switch {
			case b.Name == "":
				errs = append(errs, fmt.Errorf("service %q backend #%d: empty name", c.Name, j))
			case bn[b.Name]:
				errs = append(errs, fmt.Errorf("service %q backend %q: duplicate name", c.Name, b.Name))
			}
			bn[b.Name] = true
		}
	}
	return errors.Join(errs...)
}

func (p *Proxy) newService(c ServiceConfig) *service {
	s := &service{p: p, name: c.Name, byName: map[string]*backend{}, changed: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(p.ctx)
	return s
}

func (p *Proxy) removeService(s *service) {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	list := s.list
	s.mu.Unlock()
	ln.close() // outside the lock: the loops take it to route
	s.cancel()
	s.wakeHeld() // held connections are refused now
	for _, b := range list {
		b.closeSessions(true, false, "service removed")
	}
}

// updateService applies c to s (new or existing); call with p.mu held.
func (p *Proxy) updateService(s *service, c ServiceConfig) error {
	s.mu.Lock()
	oldListen := s.cfg.Listen
	listening := s.ln != nil && s.lnErr == nil
	s.cfg = c
	s.cfg.Backends = nil
	s.maxConns.Store(int64(c.MaxConns))
	ap := append([]netip.Prefix(nil), c.AcceptProxy...)
	s.acceptProxy.Store(&ap)

	var drop []*backend
	keep := map[string]bool{}
	list := make([]*backend, 0, len(c.Backends))
	for _, bc := range c.Backends {
		keep[bc.Name] = true
		b := s.byName[bc.Name]
		if b != nil && b.cfg.Address != bc.Address {
			// Its sessions go to another server now: drop it and start
			// afresh (health unknown until the next report).
			drop = append(drop, b)
			b = nil
		}
		if b == nil {
			b = newBackend(bc)
		}
		b.cfg = bc
		b.max.Store(int64(bc.MaxConns))
		list = append(list, b)
	}
	for name, b := range s.byName {
		if !keep[name] {
			drop = append(drop, b)
		}
	}
	s.list = list
	s.byName = make(map[string]*backend, len(list))
	for _, b := range list {
		s.byName[b.cfg.Name] = b
	}
	if s.target != nil && s.byName[s.target.cfg.Name] != s.target {
		s.target = nil
	}
	ev, closeOld := s.recompute("config applied")
	s.mu.Unlock()

	for _, b := range drop {
		b.closeSessions(true, false, "backend removed or changed by a reload")
	}
	if closeOld != nil {
		closeOld.closeSessions(false, false, "no longer the target after a reload")
	}
	p.emit(ev)

	if listening && oldListen == c.Listen {
		return nil
	}
	l, err := s.listen(c.Listen)
	s.mu.Lock()
	if err != nil {
		// Keep serving on the old address, if any, and say why.
		s.lnErr = err
		s.mu.Unlock()
		return err
	}
	old := s.ln
	s.ln, s.lnErr = l, nil
	s.startAccept(l)
	s.mu.Unlock()
	old.close()
	return nil
}

func (p *Proxy) service(name string) *service {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.services[name]
}

// SetHealth records a backend's health (transitions, role and lag updates)
// and re-decides the service's target. Unknown names are ignored.
func (p *Proxy) SetHealth(service, backend string, h Health) {
	s := p.service(service)
	if s == nil {
		return
	}
	s.mu.Lock()
	b := s.byName[backend]
	if b == nil {
		s.mu.Unlock()
		return
	}
	wasUp := b.h.Known && b.h.Up
	b.h = h
	wentDown := wasUp && !(h.Known && h.Up)
	ev, closeOld := s.recompute("health of " + backend)
	closeDown := wentDown && s.cfg.CloseOnDown
	s.mu.Unlock()
	if closeDown {
		if n := b.closeSessions(false, false, "backend down"); n > 0 {
			p.log.Info("closed sessions of a backend that went down", "service", service, "backend", backend, "sessions", n)
		}
	}
	if closeOld != nil && closeOld != b {
		closeOld.closeSessions(false, false, "no longer the target")
	}
	p.emit(ev)
}

// SetRoute sets an External service's active-passive target, as committed
// by the cluster, with the lease that bounds forwarding to it. backend ""
// means no target: new connections are held up to SwitchHold, then
// refused. The lease is kept by sessions dialled under it and bounds their
// writes to the backend.
func (p *Proxy) SetRoute(service, backend string, lease Lease) {
	s := p.service(service)
	if s == nil {
		return
	}
	s.mu.Lock()
	if !s.cfg.External {
		s.mu.Unlock()
		p.log.Warn("route ignored: service is not External", "service", service, "backend", backend)
		return
	}
	s.route, s.lease = backend, lease
	_, closeOld := s.recompute("route set")
	s.mu.Unlock()
	if closeOld != nil {
		closeOld.closeSessions(false, true, "the cluster's route moved") // fenced: unsent bytes are dropped (RST)
	}
}

// ErrDrainTarget refuses to drain the backend an active-passive service
// sends all its connections to: that would move writes, which is a
// failover's or a switchover's business, not a drain's.
var ErrDrainTarget = errors.New("it is the active-passive target: drain would move writes; fail it over or switch over instead")

// SetDrain takes a backend out of new connections (on) or puts it back
// (off). Sessions already open run on until they end. In an active-active
// service it leaves the rotation; in an active-passive one it is no
// failover candidate, and the current target cannot be drained.
func (p *Proxy) SetDrain(svc, name string, on bool) error {
	return p.setBackendFlag(svc, name, map[bool]string{true: "drain", false: "undrain"}[on],
		func(s *service, b *backend) error {
			switch {
			case on && !s.cfg.balanced() && (s.target == b || s.cfg.External && s.route == name):
				return ErrDrainTarget // the caller names the drain, the backend and the service
			case b.draining == on:
				return errUnchanged
			}
			return nil
		},
		func(b *backend) { b.draining = on })
}

// SetFence fences a backend of an active-passive service that routes by
// itself (not External): no failover picks it until it is unfenced. If it
// is the target the service moves to the best other backend (refused when
// there is none), as on a failover. A failover of a service without roles
// fences the primary it moves away from on its own. Kept across reloads,
// not restarts.
func (p *Proxy) SetFence(svc, name string, on bool) error {
	return p.setBackendFlag(svc, name, map[bool]string{true: "fence", false: "unfence"}[on],
		func(s *service, b *backend) error {
			switch {
			case s.cfg.balanced():
				return fmt.Errorf("service %q is active-active: take a backend out of the rotation with drain", svc)
			case s.cfg.External:
				return fmt.Errorf("service %q follows the cluster: fence through it", svc)
			case b.fenced == on:
				return fmt.Errorf("backend %q of service %q is %s", name, svc, map[bool]string{true: "already fenced", false: "not fenced"}[on])
			case on && s.target == b:
				cs := s.candidates()
				for i := range cs {
					cs[i].fenced = cs[i].fenced || cs[i].name == name
				}
				if d := chooseTarget(&s.cfg, cs, name, s.pending, s.from); d.target == "" {
					return fmt.Errorf("%q is the target of %q and no backend can take over (%s)", name, svc, d.reason)
				}
			}
			return nil
		},
		func(b *backend) { b.fenced = on })
}

// errUnchanged tells setBackendFlag that there is nothing to do.
var errUnchanged = errors.New("unchanged")

// setBackendFlag is an operator's change to one backend: under the
// service's lock, check refuses it (or finds it already done) and set
// applies it; then the target is decided again, the sessions of a target
// it moved away from are reset, and the move is reported.
func (p *Proxy) setBackendFlag(service, backend, verb string, check func(*service, *backend) error, set func(*backend)) error {
	s := p.service(service)
	if s == nil {
		return fmt.Errorf("unknown service %q", service)
	}
	s.mu.Lock()
	b := s.byName[backend]
	if b == nil {
		s.mu.Unlock()
		return fmt.Errorf("service %q has no backend %q", service, backend)
	}
	if err := check(s, b); err != nil {
		s.mu.Unlock()
		if errors.Is(err, errUnchanged) {
			return nil
		}
		return err
	}
	set(b)
	ev, closeOld := s.recompute(verb + " of " + backend)
	s.mu.Unlock()
	p.log.Info(verb, "service", service, "backend", backend, "sessions", b.active.Load())
	if closeOld != nil {
		closeOld.closeSessions(false, true, verb+" of the backend")
	}
	p.emit(ev)
	return nil
}

// CloseSessions closes every session of the service to the backend now
// (fencing) and returns how many there were. It resets the connections
// (SO_LINGER 0): bytes still in the socket buffers are dropped instead of
// being delivered to a backend that was fenced.
func (p *Proxy) CloseSessions(service, backend string) int {
	s := p.service(service)
	if s == nil {
		return 0
	}
	s.mu.Lock()
	b := s.byName[backend]
	s.mu.Unlock()
	if b == nil {
		return 0
	}
	return b.closeSessions(false, true, "the cluster's route moved")
}

// LeaseLost is how many sessions to backend of service the data plane has
// closed by itself since it started because their route's lease ran out
// (on Linux; elsewhere they end at their next write and are not counted).
func (p *Proxy) LeaseLost(service, backend string) uint64 {
	s := p.service(service)
	if s == nil {
		return 0
	}
	s.mu.Lock()
	b := s.byName[backend]
	s.mu.Unlock()
	if b == nil {
		return 0
	}
	return b.leaseLost.Load()
}

// Status returns a snapshot of every service, sorted by name.
func (p *Proxy) Status() []ServiceStatus {
	p.mu.Lock()
	ss := make([]*service, 0, len(p.services))
	for _, s := range p.services {
		ss = append(ss, s)
	}
	p.mu.Unlock()
	out := make([]ServiceStatus, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ServiceStatus returns a snapshot of one service; ok is false when there
// is no service of that name. It costs one service's snapshot, not all.
func (p *Proxy) ServiceStatus(name string) (st ServiceStatus, ok bool) {
	s := p.service(name)
	if s == nil {
		return ServiceStatus{}, false
	}
	return s.status(), true
}

// ListenerFDs returns a duplicate of every listening socket, by the
// listen address its service was configured with, for a process that
// takes over (its Options.Inherited); the caller owns and closes them.
// Linux only.
func (p *Proxy) ListenerFDs() (map[string][]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.draining {
		return nil, errors.New("proxy: draining or closed")
	}
	out := map[string][]int{}
	for _, s := range p.services {
		s.mu.Lock()
		ln := s.ln
		s.mu.Unlock()
		if ln == nil {
			continue
		}
		fds, err := ln.dup()
		if err != nil {
			for _, fds := range out {
				closeFDs(fds)
			}
			return nil, fmt.Errorf("service %q: %w", s.name, err)
		}
		out[ln.listen] = fds
	}
	p.holdSteering(true)
	return out, nil
}

// HandOverFailed says the process given the sockets by ListenerFDs will
// not serve them: this one steers new connections over its loops again
// (from ListenerFDs on it leaves that to the new process).
func (p *Proxy) HandOverFailed() { p.holdSteering(false) }

// StopAccepting closes every listener and returns once they are closed;
// sessions, held connections included, run on. Drain begins with it, and
// Apply fails after it.
func (p *Proxy) StopAccepting() {
	p.mu.Lock()
	p.draining = true
	var lns []*listener
	for _, s := range p.services {
		s.mu.Lock()
		lns = append(lns, s.ln)
		s.ln = nil
		s.mu.Unlock()
	}
	p.mu.Unlock()
	for _, ln := range lns {
		ln.close()
	}
}

// drainPoll is how often Drain looks at the number of open connections.
const drainPoll = 5 * time.Millisecond

// Drain stops accepting, waits until every client connection has ended or
// ctx is done, then closes what is left. It returns ctx's error if it had to
// close connections. Held connections still go through if a target
// appears within their SwitchHold. Apply fails after Drain; Close must
// still be called.
func (p *Proxy) Drain(ctx context.Context) error {
	p.StopAccepting()
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for p.active.Load() > 0 {
		select {
		case <-ctx.Done():
			n := p.active.Load()
			p.closeAll()
			return fmt.Errorf("drain: closed %d connections: %w", n, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// closeAll refuses held connections and closes every session.
func (p *Proxy) closeAll() {
	p.closing.Store(true)
	p.cancel()
	p.mu.Lock()
	var bs []*backend
	var lns []*listener
	for _, s := range p.services {
		s.mu.Lock()
		lns = append(lns, s.ln)
		s.ln = nil
		bs = append(bs, s.list...)
		s.mu.Unlock()
		s.wakeHeld() // held connections are refused now
	}
	p.mu.Unlock()
	for _, ln := range lns {
		ln.close()
	}
	for _, b := range bs {
		b.closeSessions(false, false, "proxy closing")
	}
}

// Close stops every listener, closes every connection and waits for all
// goroutines of the proxy. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.closeInherited()
	p.mu.Unlock()
	p.closeAll()
	p.stopOnce.Do(p.stopPlane)
	p.wg.Wait()
	p.evMu.Lock()
	p.evStop = true
	p.evMu.Unlock()
	p.evCond.Broadcast()
	p.evWG.Wait()
	return nil
}
