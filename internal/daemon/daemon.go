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
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
	"github.com/quorumproxy/quorumproxy/proxy"
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
}

// New starts the proxy, the cluster side (with [cluster]), the health checks
// and the admin API, in that order; on error nothing is left running.
func New(o Options) (*Daemon, error) {
	log, cfg := o.Logger, o.Config
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{log: log, cfgPath: o.ConfigPath, version: o.Version, cfg: cfg, started: time.Now(), ready: make(chan struct{}),
		lastTarget: map[string]string{}, failover: newFailoverClock(), lag: newLagAlerts()}
	defer close(d.ready)
	m, err := newMetricsExporter()
	if err != nil {
		return nil, err
	}
	d.metrics = m
	d.history = openHistory(log, cfg)
	d.hooks = newHookRunner(log)
	d.hooks.note = d.note
	d.repoint = newRepointer(d)
	d.hooks.promoted = func(service, backend string) { d.repoint.start(service, backend, 0) }
	d.px = proxy.New(proxy.Options{Logger: log, OnTarget: d.onTarget, Loops: cfg.Proxy.Loops, AccessLog: cfg.Log.Access})
	if err := d.px.Apply(proxyServices(cfg, clusterServices(cfg))); err != nil {
		d.px.Close()
		return nil, err
	}
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
	d.repoint.healthChanged(s)
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
	d.mu.Lock()
	drain := d.cfg.Proxy.DrainTimeout
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	if err := d.px.Drain(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		d.log.Warn("drain", "err", err)
	}
	cancel()
	d.mon.Close()
	if d.cluster != nil {
		d.cluster.close() // leave the cluster: the others stop counting on us
	}
	d.px.Close()
	d.repoint.close()
	d.hooks.wait()
	d.stopAdmin()
	d.history.Close()
	current.CompareAndSwap(d, nil)
}
