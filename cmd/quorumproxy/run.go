package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/proxy"
)

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: quorumproxy run -config FILE")
		return 2
	}
	cfg, warnings, err := loadConfig(*path, false)
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy: %s\n", err)
		return 1
	}
	log := newLogger(cfg.Log, stderr)
	for _, w := range warnings {
		log.Warn("config", "problem", w.Error())
	}

	d, err := newDaemon(*path, cfg, log)
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	log.Info("quorumproxy started", "version", version, "config", *path, "services", len(cfg.Services))
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			d.reload()
			continue
		}
		log.Info("draining", "signal", sig.String())
		break
	}
	d.shutdown()
	log.Info("quorumproxy stopped")
	return 0
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon wires the packages: health observes, proxy routes; hooks run when
// the active-passive target moves.
type daemon struct {
	log     *slog.Logger
	cfgPath string
	started time.Time
	px      *proxy.Proxy
	mon     *health.Monitor
	hooks   *hookRunner
	metrics *metricsExporter
	cluster *clusterSide // nil without [cluster]

	mu         sync.Mutex
	cfg        *config.Config
	lastReload reloadResult

	admin   *http.Server
	adminLn net.Listener
	adminWG sync.WaitGroup
}

type reloadResult struct {
	At    time.Time `json:"at"`
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
}

func newDaemon(path string, cfg *config.Config, log *slog.Logger) (*daemon, error) {
	d := &daemon{log: log, cfgPath: path, cfg: cfg, started: time.Now()}
	m, err := newMetricsExporter()
	if err != nil {
		return nil, err
	}
	d.metrics = m
	d.hooks = newHookRunner(log)
	d.px = proxy.New(proxy.Options{Logger: log, OnTarget: d.onTarget, Loops: cfg.Proxy.Loops})
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
	d.hooks.check = func(service, backend string) (bool, bool) {
		up, role := d.checkNow(service, backend)
		return up, role == cluster.RolePrimary
	}
	if err := d.mon.Set(healthTargets(cfg)); err != nil {
		log.Error("health checks", "err", err)
	}
	d.lastReload = reloadResult{At: d.started, OK: true}
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

func (d *daemon) onHealth(s health.State) {
	d.px.SetHealth(s.Service, s.Backend, proxyHealth(s))
	if d.cluster != nil {
		d.cluster.observe(s)
	}
	d.metrics.healthChanged(s)
}

func (d *daemon) onTarget(ev proxy.TargetChange) {
	d.mu.Lock()
	svc := findService(d.cfg, ev.Service)
	d.mu.Unlock()
	if svc == nil {
		return
	}
	d.hooks.targetChanged(*svc, ev)
}

// reload applies the file again; an invalid file is reported and the running
// config stays.
func (d *daemon) reload() {
	cfg, warnings, err := loadConfig(d.cfgPath, false)
	if err == nil && clusterHash(cfg) != d.clusterHash() {
		// The Node's peers and services are fixed for its life: changing
		// them is a restart, done proxy by proxy (see the README).
		err = errors.New("[cluster], the peer list or a clustered service's backends changed: restart the proxy to apply")
	}
	res := reloadResult{At: time.Now(), OK: err == nil}
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
	d.cfg = cfg
	d.mu.Unlock()
	if oldAdmin != cfg.Admin {
		d.log.Warn("reload: [admin] changes take effect at the next restart")
	}
	d.setReload(res)
	if res.OK {
		d.log.Info("reloaded", "config", d.cfgPath, "services", len(cfg.Services))
	}
}

func (d *daemon) clusterHash() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return clusterHash(d.cfg)
}

func (d *daemon) setReload(r reloadResult) {
	d.mu.Lock()
	d.lastReload = r
	d.mu.Unlock()
}

// shutdown drains: stop accepting, wait for sessions up to drain_timeout,
// stop checks, wait for hooks, close the admin API.
func (d *daemon) shutdown() {
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
	d.hooks.wait()
	d.stopAdmin()
}
