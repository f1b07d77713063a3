package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/daemon"
)

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (or give it as the argument)")
	skipFiles := fs.Bool("skip-files", false, "check the file alone: do not read the key, token, password and TLS files, programs and state_dir it names (for a config checked away from its proxy's machine)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" && fs.NArg() == 1 {
		*path = fs.Arg(0)
	}
	if *path == "" || fs.NArg() > 1 {
		fmt.Fprintln(stderr, "usage: quorumproxy check-config [-skip-files] FILE")
		return 2
	}
	cfg, warnings, err := daemon.LoadConfig(*path, *skipFiles)
	for _, w := range warnings {
		fmt.Fprintln(stdout, w.Error()) // Error() already says "warning:"
	}
	if err != nil {
		var probs config.Problems
		if errors.As(err, &probs) {
			for _, p := range probs {
				fmt.Fprintf(stderr, "error: %s\n", p.Error())
			}
			fmt.Fprintf(stderr, "%s: %d problem(s)\n", *path, len(probs))
		} else {
			fmt.Fprintf(stderr, "error: %v\n", err)
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d service(s))\n", *path, len(cfg.Services))
	return 0
}
