package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

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
	cfg, warnings, err := daemon.LoadConfig(*path, false)
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy: %s\n", err)
		return 1
	}
	log := daemon.NewLogger(cfg.Log, stderr)
	for _, w := range warnings {
		log.Warn("config", "problem", w.Error())
	}

	d, err := daemon.New(daemon.Options{ConfigPath: *path, Config: cfg, Logger: log, Version: version})
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	log.Info("quorumproxy started", "version", version, "config", *path, "services", len(cfg.Services))
	sdNotify("READY=1\nSTATUS=serving")
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			sdNotify("RELOADING=1")
			d.Reload()
			sdNotify("READY=1\nSTATUS=serving")
			continue
		}
		log.Info("draining", "signal", sig.String())
		break
	}
	sdNotify("STOPPING=1\nSTATUS=draining")
	d.Shutdown()
	log.Info("quorumproxy stopped")
	return 0
}
