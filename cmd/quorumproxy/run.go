package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/daemon"
)

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (or give it as the argument)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" && fs.NArg() == 1 {
		*path = fs.Arg(0) // as check-config takes it
	}
	if *path == "" || fs.NArg() > 1 || (fs.NArg() == 1 && *path != fs.Arg(0)) {
		fmt.Fprintln(stderr, "usage: quorumproxy run [-config] FILE")
		return 2
	}
	// At once: SIGUSR2's default action would end a process still
	// starting (one started by an upgrade, too); it waits in sigs.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	// Started by an upgrade (SIGUSR2 to the old process): its listening
	// sockets are ours to take. Any error before we say ready leaves the
	// old process serving; it logs our exit.
	h, err := inheritedSpec()
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy: upgrade: %s\n", err)
		return 1
	}
	cfg, warnings, err := daemon.LoadConfig(*path, false)
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy: %s\n", err)
		return 1
	}
	log := daemon.NewLogger(cfg.Log, stderr)
	for _, w := range warnings {
		log.Warn("config", "problem", w.Error())
	}
	if h != nil {
		// A clustered old process leaves the cluster now, for our Node.
		if err := h.waitGo(); err != nil {
			h.Sockets.Close()
			log.Error("upgrade: start failed", "err", err)
			return 1
		}
	}

	// POST /api/v1/upgrade asks the loop below, as SIGUSR2 does.
	upgradeReqs := make(chan chan error)
	opts := daemon.Options{ConfigPath: *path, Config: cfg, Logger: log, Version: version,
		Upgrade: func() error {
			reply := make(chan error, 1)
			t := time.NewTimer(5 * time.Second)
			defer t.Stop()
			select {
			case upgradeReqs <- reply:
				return <-reply
			case <-t.C:
				return errors.New("the proxy is busy starting, reloading or stopping; try again")
			}
		}}
	if h != nil {
		opts.Inherited, opts.Marks = h.Services, h.Marks
		if opts.AdminListener, err = h.adminListener(cfg.Admin.Listen); err != nil {
			h.Sockets.Close()
			log.Error("start failed", "err", err)
			return 1
		}
	}
	d, err := daemon.New(opts)
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	log.Info("quorumproxy started", "version", version, "config", *path, "services", len(cfg.Services), "pid", os.Getpid())
	if h != nil {
		takeOver(log, d, h)
	} else {
		sdNotify("READY=1\nSTATUS=serving")
	}

	var upgrading chan upgradeResult // non-nil while a new process starts
	stopUpgrade := make(chan struct{})
	begin := func() error {
		if upgrading != nil {
			return errors.New("an upgrade is already in progress")
		}
		socks, err := d.ListenerFDs()
		if err != nil {
			return err
		}
		var leave func()
		if cfg.Cluster != nil {
			// Gossip ports and state_dir are not shared: we leave the
			// cluster once the new process has loaded its config.
			leave = func() {
				log.Info("upgrade: the new process loaded its config; leaving the cluster for it")
				d.StopForHandOver()
			}
		}
		log.Info("upgrade: starting the new process", "binary", os.Args[0])
		d.NoteUpgrade(noteUpgradeStarting + " a new process from " + os.Args[0])
		upgrading = make(chan upgradeResult, 1)
		go func(c chan<- upgradeResult) { c <- startUpgrade(socks, d.Marks(), leave, stopUpgrade) }(upgrading)
		return nil
	}
	for {
		select {
		case reply := <-upgradeReqs:
			reply <- begin()
			continue
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				if upgrading != nil {
					log.Warn("reload ignored: an upgrade is in progress (the new process reads the file)")
					continue
				}
				sdNotify("RELOADING=1")
				d.Reload()
				sdNotify("READY=1\nSTATUS=serving")
				continue
			case syscall.SIGUSR2:
				if err := begin(); err != nil {
					log.Error("upgrade not started: keeping this process", "err", err)
				}
				continue
			}
			log.Info("draining", "signal", sig.String())
		case r := <-upgrading:
			upgrading = nil
			switch {
			case r.err == nil:
				// The new process accepts on the same sockets and is the
				// service's main pid now: no STOPPING=1 from here.
				took := time.Since(r.start)
				log.Info("upgrade: handed over; draining", "new_pid", r.pid, "took", took)
				d.NoteUpgrade(fmt.Sprintf("upgrade: handed over to pid %d after %s", r.pid, took.Round(time.Millisecond)))
				d.HandOver()
				log.Info("quorumproxy stopped: handed over", "new_pid", r.pid)
				return 0
			case r.left:
				// Nothing accepts on the sockets any more: exit non-zero,
				// so that the service manager restarts the proxy.
				log.Error("upgrade failed after this process left the cluster: draining and exiting 1", "err", r.err)
				d.NoteUpgrade(noteUpgradeFailed + " after this process left the cluster: " + r.err.Error())
				d.HandOver()
				return 1
			default:
				log.Error("upgrade failed: keeping this process", "err", r.err)
				d.HandOverFailed()
				d.NoteUpgrade(noteUpgradeFailed + ": keeping this process: " + r.err.Error())
			}
			continue
		}
		break
	}
	if upgrading != nil {
		close(stopUpgrade) // a new process not yet ready is killed
		if r := <-upgrading; r.err == nil {
			// Ready just as we were told to stop: it serves on.
			log.Info("upgrade: handed over while stopping", "new_pid", r.pid)
			d.HandOver()
			return 0
		}
	}
	sdNotify("STOPPING=1\nSTATUS=draining")
	d.Shutdown()
	log.Info("quorumproxy stopped")
	return 0
}
