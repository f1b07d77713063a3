// Package daemon is quorumproxy's running proxy: it wires the packages
// together (health observes, the cluster agrees, the proxy routes), runs
// the hooks, exports the metrics and serves the admin API. The binary in
// cmd/quorumproxy parses flags and signals and calls New, Reload and
// Shutdown; tests run a Daemon in-process the same way.
//
//	cfg, warnings, err := daemon.LoadConfig(path, false)
//	d, err := daemon.New(daemon.Options{ConfigPath: path, Config: cfg, Logger: log, Version: version})
//	...
//	d.Reload()   // on SIGHUP
//	d.Shutdown() // on SIGTERM: drain, leave the cluster, wait for hooks
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
	"github.com/quorumproxy/quorumproxy/proxy"
	"golang.org/x/sys/unix"
)

// NewLogger is the logger [log] asks for, writing to w; bursts of lines
// about many services are summarised (see burstHandler).
func NewLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(newBurstHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(newBurstHandler(slog.NewTextHandler(w, opts)))
}

// Options configure a Daemon.
type Options struct {
	// ConfigPath is the file Config came from; Reload reads it again.
	ConfigPath string
	// Config is the checked configuration (LoadConfig).
	Config *config.Config
	// Logger receives every log line; nil: slog.Default().
	Logger *slog.Logger
	// Version is what /status reports.
	Version string

	// Inherited are the data plane's listening sockets handed over by the
	// process this one replaces (proxy.Options.Inherited); the Daemon
	// owns them.
	Inherited map[string][]int
	// AdminListener, if set, is the admin API's socket handed over, for
	// [admin] listen; the Daemon owns it.
	AdminListener net.Listener
	// Upgrade starts an upgrade, as SIGUSR2 does (POST /api/v1/upgrade);
	// it returns once the new process is started, not ready. Nil: the
	// admin API refuses upgrades.
	Upgrade func() error
	// Marks are the fenced and drained backends of the process this one
	// replaces, set before the first health check: a proxy alone keeps
	// them only in memory, and an upgrade must not route writes back to
	// a primary it failed over from.
	Marks Marks
}

// Marks are backends fenced or drained on this proxy alone (not through
// a cluster), by service.
type Marks struct {
	Fenced  map[string][]string `json:"fenced,omitempty"`
	Drained map[string][]string `json:"drained,omitempty"`
}

// Sockets are a Daemon's listening sockets, duplicated for a process that
// takes over (HandOver); the receiver owns every fd.
type Sockets struct {
	// Services maps each service's listen address as configured to the
	// fds of its SO_REUSEPORT group (one per event loop).
	Services map[string][]int `json:"services"`
	// AdminListen is [admin] listen and Admin the admin API's socket;
	// -1 without one.
	AdminListen string `json:"admin_listen,omitempty"`
	Admin       int    `json:"admin"`
}

// Close closes every fd of s.
func (s Sockets) Close() {
	for _, fds := range s.Services {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
	}
	if s.Admin >= 0 {
		_ = unix.Close(s.Admin)
	}
}

// Daemon wires the packages: health observes, the cluster agrees, the
// proxy routes; hooks run when the active-passive target moves.
type Daemon struct {
	log     *slog.Logger
	cfgPath string
	version string
	started time.Time
	// ready is closed when New returns: the cluster's Node may call back
	// before then (it starts before the checks), and work it queues reads
	// d.cluster and d.mon only after it.
	ready   chan struct{}
	px      *proxy.Proxy
	mon     *health.Monitor
	hooks   *hookRunner
	metrics *metricsExporter
	cluster *clusterSide // nil without [cluster]
	history *journal.Journal
	lag     *lagAlerts
	repoint *repointer

	mu         sync.Mutex
	cfg        *config.Config
	lastReload adminapi.ReloadResult
	lastTarget map[string]string // a lone proxy's last non-empty target per service
	failover   *failoverClock

	// stopping is set when Shutdown starts: readiness turns 503 so that
	// a load balancer stops sending clients while the proxy drains.
	stopping atomic.Bool

	admin   *http.Server
	adminLn net.Listener
	adminWG sync.WaitGroup
	upgrade func() error // Options.Upgrade
	// adminListen is the [admin] listen adminLn was made for (a reload
	// does not move it).
	adminListen string
	// adminInherited is Options.AdminListener until startAdmin takes it.
	adminInherited net.Listener
	// handedOver is set when another process took the listeners: the
	// admin API's accept loop ending is then no error.
	handedOver atomic.Bool
}

// New starts the proxy, the cluster side (with [cluster]), the health checks
// and the admin API, in that order; on error nothing is left running.
func New(o Options) (*Daemon, error) {
	log, cfg := o.Logger, o.Config
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{log: log, cfgPath: o.ConfigPath, version: o.Version, cfg: cfg, started: time.Now(), ready: make(chan struct{}),
		lastTarget: map[string]string{}, failover: newFailoverClock(), lag: newLagAlerts(), adminInherited: o.AdminListener, upgrade: o.Upgrade}
	defer close(d.ready)
	defer func() {
		if d.adminInherited != nil { // New failed before startAdmin took it
			d.adminInherited.Close()
		}
	}()
	m, err := newMetricsExporter()
	if err != nil {
		(Sockets{Services: o.Inherited, Admin: -1}).Close()
		return nil, err
	}
	d.metrics = m
	d.history = openHistory(log, cfg)
	d.hooks = newHookRunner(log)
	d.hooks.note = d.note
	d.repoint = newRepointer(d)
	d.hooks.promoted = func(service, backend string) { d.repoint.start(service, backend, 0) }
	d.px = proxy.New(proxy.Options{Logger: log, OnTarget: d.onTarget, Loops: cfg.Proxy.Loops, NoIOURing: cfg.Proxy.IOURing == "off", AccessLog: cfg.Log.Access, Inherited: o.Inherited})
	if err := d.px.Apply(proxyServices(cfg, clusterServices(cfg))); err != nil {
		d.px.Close()
		return nil, err
	}
	d.restoreMarks(o.Marks, clusterServices(cfg))
	if cfg.Cluster != nil {
		// The cluster starts before the checks so that no observation is lost.
		cs, err := startCluster(cfg, d)
		if err != nil {
			d.px.Close()
			return nil, err
		}
		d.cluster = cs
	}
	d.mon = health.NewMonitor(log, d.onHealth)
	d.mon.ObserveChecks(observeCheck)
	d.hooks.check = func(service, backend string) (bool, bool) {
		up, role := d.checkNow(service, backend)
		return up, role == cluster.RolePrimary
	}
	if err := d.mon.Set(healthTargets(cfg)); err != nil {
		log.Error("health checks", "err", err)
	}
	d.lastReload = adminapi.ReloadResult{At: d.started, OK: true}
	serviceSeries(d)
	current.Store(d) // /metrics reads this daemon
	if err := d.startAdmin(cfg.Admin); err != nil {
		d.mon.Close()
		if d.cluster != nil {
			d.cluster.close()
		}
		d.px.Close()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) onHealth(s health.State) {
	d.failover.health(s.Service, s.Backend, s.Status == health.StatusUp, time.Now())
	var mask uint64
	var upstream string
	if len(s.SyncStandbys) > 0 || s.Upstream != "" {
		d.mu.Lock()
		svc := d.cfg.Service(s.Service)
		mask, upstream = syncMask(svc, s.SyncStandbys), upstreamName(svc, s.Upstream)
		d.mu.Unlock()
	}
	d.px.SetHealth(s.Service, s.Backend, proxyHealth(s, mask, upstream))
	if d.cluster != nil {
		d.cluster.observe(s, mask, upstream)
	}
	d.metrics.healthChanged(s)
	d.lagChanged(s)
	if !d.handedOver.Load() { // the new process repoints now
		d.repoint.healthChanged(s)
	}
}

func (d *Daemon) onTarget(ev proxy.TargetChange) {
	d.mu.Lock()
	svc := d.cfg.Service(ev.Service)
	d.mu.Unlock()
	if svc == nil {
		return
	}
	d.note(journal.Entry{Service: ev.Service, Kind: "target",
		Summary: fmt.Sprintf("target %s -> %s: %s", orNone(ev.Old.Name), orNone(ev.New.Name), ev.Reason)})
	d.failover.routedTo(ev.Service, ev.New.Name, time.Now())
	if n := ev.New.Name; n != "" {
		// A move from the last target, through none or not, is a failover.
		d.mu.Lock()
		last := d.lastTarget[ev.Service]
		d.lastTarget[ev.Service] = n
		d.mu.Unlock()
		if last != "" && last != n {
			failovers.WithLabelValues(ev.Service).Inc()
		}
	}
	if d.handedOver.Load() {
		// The new process decides and acts now; hooks must not run twice.
		d.log.Info("target moved while draining after a hand-over: its hooks are the new process's", "service", ev.Service, "new", orNone(ev.New.Name))
		return
	}
	d.hooks.targetChanged(*svc, ev)
	d.repoint.poke(ev.Service)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Reload applies the config file again; an invalid file is reported and
// the running config stays.
func (d *Daemon) Reload() {
	cfg, warnings, err := LoadConfig(d.cfgPath, false)
	if d.handedOver.Load() {
		err = errors.New("this process handed its listeners to a new one and drains: reload that one")
	}
	if err == nil && clusterHash(cfg) != d.clusterHash() {
		// The Node's peers and services are fixed for its life: changing
		// them is a restart, done proxy by proxy (see the README).
		err = errors.New("[cluster], the peer list or a clustered service's backends changed: restart the proxy to apply")
	}
	res := adminapi.ReloadResult{At: time.Now(), OK: err == nil}
	defer func() {
		summary := "config reloaded"
		if !res.OK {
			summary = "reload: " + res.Error
		}
		d.note(journal.Entry{Kind: "reload", Summary: summary})
	}()
	if err != nil {
		res.Error = err.Error()
		d.log.Error("reload rejected: keeping the running config", "config", d.cfgPath, "err", err)
		d.setReload(res)
		return
	}
	for _, w := range warnings {
		d.log.Warn("config", "problem", w.Error())
	}
	if err := d.px.Apply(proxyServices(cfg, clusterServices(cfg))); err != nil {
		// Apply keeps every service it could start; say which ones failed.
		res.OK, res.Error = false, err.Error()
		d.log.Error("reload applied with errors", "err", err)
	}
	if err := d.mon.Set(healthTargets(cfg)); err != nil {
		res.OK, res.Error = false, err.Error()
		d.log.Error("reload: health checks", "err", err)
	}
	d.px.SetAccessLog(cfg.Log.Access)
	if d.cluster != nil {
		for _, s := range cfg.Services {
			if d.cluster.owned[s.Name] {
				if err := d.cluster.rt.SetHooks(s.Name, clusterHooks(s)); err != nil {
					d.log.Warn("reload: cluster hooks", "service", s.Name, "err", err)
				}
			}
		}
	}
	d.mu.Lock()
	oldAdmin := d.cfg.Admin
	oldLoops, oldURing := d.cfg.Proxy.Loops, d.cfg.Proxy.IOURing
	oldFixed := clusterFixed(d.cfg)
	d.cfg = cfg
	d.mu.Unlock()
	for name, now := range clusterFixed(cfg) {
		if was, ok := oldFixed[name]; ok && was != now {
			d.log.Warn("reload: a clustered service's priorities, rpo and lag bounds take effect at the next restart", "service", name)
		}
	}
	if oldAdmin != cfg.Admin {
		d.log.Warn("reload: [admin] changes take effect at the next restart")
	}
	if oldLoops != cfg.Proxy.Loops || oldURing != cfg.Proxy.IOURing {
		d.log.Warn("reload: [proxy] loops and io_uring take effect at the next restart (or upgrade)")
	}
	d.setReload(res)
	serviceSeries(d)
	if res.OK {
		d.log.Info("reloaded", "config", d.cfgPath, "services", len(cfg.Services))
	}
}

func (d *Daemon) clusterHash() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return clusterHash(d.cfg)
}

func (d *Daemon) setReload(r adminapi.ReloadResult) {
	d.mu.Lock()
	d.lastReload = r
	d.mu.Unlock()
}

// Shutdown drains: stop accepting, wait for sessions up to drain_timeout,
// stop checks, leave the cluster, wait for hooks, close the admin API.
func (d *Daemon) Shutdown() {
	d.stopping.Store(true)
	d.shutdown()
}

// StopForHandOver is the old process's first step once the process that
// took its listening sockets (ListenerFDs) is ready to go on: it stops
// accepting on them (the admin API's included, closing its kept-alive
// connections after their next request, so probes reach the new
// process) and stops acting: no hook and no repointing runs here any
// more (the new process runs its own; they must not run twice). A proxy
// alone keeps checking while it drains, so that the sessions of a backend
// that fails or stops being the target are still closed at once. In a
// cluster it stops its checks and leaves: the gossip ports and the lock
// on state_dir are released for the new process. A session open here
// then runs on while its lease (checked before every dial and write)
// holds, and a lease ends before the cluster commits any change, so this
// process and the next never forward one service to two backends (see
// the README, "Restarts and upgrades"). Readiness stays as it was: the
// host still serves, through the new process. It is idempotent; HandOver
// follows it.
func (d *Daemon) StopForHandOver() {
	if d.handedOver.Swap(true) {
		return
	}
	if d.admin != nil {
		d.admin.SetKeepAlivesEnabled(false)
		d.adminLn.Close()
	}
	d.px.StopAccepting()
	if d.cluster != nil {
		d.mon.Close() // its observations would go to a Node that left
		d.cluster.close()
	}
}

// HandOverFailed says the process given the sockets by ListenerFDs will
// not serve them: this one goes on as before.
func (d *Daemon) HandOverFailed() { d.px.HandOverFailed() }

// HandOver ends this process's part after another process took its
// listening sockets: StopForHandOver, then drain as Shutdown does.
func (d *Daemon) HandOver() {
	d.StopForHandOver()
	d.shutdown()
}

func (d *Daemon) shutdown() {
	d.mu.Lock()
	drain := d.cfg.Proxy.DrainTimeout
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	if err := d.px.Drain(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		d.log.Warn("drain", "err", err)
	}
	cancel()
	d.mon.Close()
	if d.cluster != nil && !d.handedOver.Load() { // else StopForHandOver left it
		d.cluster.close() // leave the cluster: the others stop counting on us
	}
	d.px.Close()
	d.repoint.close()
	d.hooks.wait()
	d.stopAdmin()
	d.history.Close()
	current.CompareAndSwap(d, nil)
}

// Marks returns the backends fenced or drained on this proxy alone, for
// the process that takes over (Options.Marks).
func (d *Daemon) Marks() Marks {
	m := Marks{Fenced: map[string][]string{}, Drained: map[string][]string{}}
	for _, ps := range d.px.Status() {
		if d.cluster != nil && d.cluster.owned[ps.Name] {
			continue // the cluster's record holds its fences
		}
		for _, b := range ps.Backends {
			if b.Fenced {
				m.Fenced[ps.Name] = append(m.Fenced[ps.Name], b.Name)
			}
			if b.Draining {
				m.Drained[ps.Name] = append(m.Drained[ps.Name], b.Name)
			}
		}
	}
	return m
}

// restoreMarks applies the marks handed over before any check reports;
// one that no longer fits the config is logged and dropped.
func (d *Daemon) restoreMarks(m Marks, owned map[string]bool) {
	apply := func(marks map[string][]string, verb string, set func(svc, b string) error) {
		for svc, bs := range marks {
			for _, b := range bs {
				if owned[svc] {
					d.log.Warn("upgrade: "+verb+" not carried over: the service is clustered now", "service", svc, "backend", b)
					continue
				}
				if err := set(svc, b); err != nil {
					d.log.Warn("upgrade: "+verb+" not carried over", "service", svc, "backend", b, "err", err)
					continue
				}
				d.log.Info("upgrade: "+verb+" carried over", "service", svc, "backend", b)
			}
		}
	}
	apply(m.Fenced, "fence", func(svc, b string) error { return d.px.SetFence(svc, b, true) })
	apply(m.Drained, "drain", func(svc, b string) error { return d.px.SetDrain(svc, b, true) })
}

// ListenerFDs duplicates the listening sockets, the data plane's and the
// admin API's, for a process that takes over (the caller closes them).
func (d *Daemon) ListenerFDs() (Sockets, error) {
	svcs, err := d.px.ListenerFDs()
	if err != nil {
		return Sockets{}, err
	}
	s := Sockets{Services: svcs, Admin: -1}
	if d.adminLn == nil {
		return s, nil
	}
	s.AdminListen = d.adminListen
	sc, ok := d.adminLn.(syscall.Conn)
	if !ok {
		s.Close()
		return Sockets{}, fmt.Errorf("admin listener %T has no fd", d.adminLn)
	}
	rc, err := sc.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { s.Admin, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		s.Admin = -1
		s.Close()
		return Sockets{}, fmt.Errorf("admin listener: %w", err)
	}
	return s, nil
}

// handoverWaitPoll is how often WaitRouting looks at the services.
const handoverWaitPoll = 20 * time.Millisecond

// WaitRouting returns once every service forwards new connections, or
// has heard from every backend (so none will route soon), or ctx ends: a
// process taking over waits for it before the old one stops accepting,
// so that no client waits in switch_hold for a first health check. It
// names the services still waiting when ctx ends.
func (d *Daemon) WaitRouting(ctx context.Context) error {
	t := time.NewTicker(handoverWaitPoll)
	defer t.Stop()
	for {
		var waiting []string
		for _, ps := range d.px.Status() {
			if routes, _ := routesOf(ps); len(routes) > 0 {
				continue
			}
			for _, b := range ps.Backends {
				if !b.Health.Known {
					waiting = append(waiting, ps.Name)
					break
				}
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("services %v have no route yet: %w", waiting, ctx.Err())
		case <-t.C:
		}
	}
}
