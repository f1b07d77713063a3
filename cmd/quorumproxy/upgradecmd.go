package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

// upgradePoll is how often `quorumproxy upgrade` looks for the outcome.
const upgradePoll = 100 * time.Millisecond

// cmdUpgrade asks a running proxy to restart onto the binary on disk and
// hand over its listening sockets (what SIGUSR2 does), then waits until a
// new process answers on the admin API or the old one reports a failure.
func cmdUpgrade(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("upgrade", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin, tokenFile := adminFlags(fs)
	noWait := fs.Bool("no-wait", false, "return once the new process is started, without waiting for the hand-over")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the new process to serve")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: quorumproxy upgrade [-admin ADDR] [-token-file F] [-no-wait] [-timeout D]")
		return 2
	}
	return control("upgrade", *admin, *tokenFile, stdout, stderr, func(c *adminapi.Client) error {
		ctx := context.Background()
		before, err := c.Status(ctx)
		if err != nil {
			return err
		}
		a, err := c.Post(ctx, "/api/v1/upgrade", nil)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, a.Message)
		if *noWait {
			return nil
		}
		deadline := time.Now().Add(*timeout)
		for time.Now().Before(deadline) {
			time.Sleep(upgradePoll)
			// Until the old process stops accepting, either may answer.
			if st, err := c.Status(ctx); err == nil && st.Started.After(before.Started) {
				fmt.Fprintf(stdout, "upgraded: a new process (version %s) serves since %s\n", st.Version, st.Started.UTC().Format(time.RFC3339))
				return nil
			}
			if h, err := c.History(ctx, "", 20); err == nil {
				if why := upgradeFailure(h.Entries); why != "" {
					return errors.New(why)
				}
			}
		}
		return fmt.Errorf("no new process answered within %s: see the proxy's log", *timeout)
	})
}

// How run's history entries about an upgrade begin: `quorumproxy upgrade`
// reads the outcome from them.
const (
	noteUpgradeStarting = "upgrade: starting"
	noteUpgradeFailed   = "upgrade failed"
)

// upgradeFailure is the failure recorded after the last upgrade started
// (entries oldest first; the proxy's clock, not ours), or "".
func upgradeFailure(entries []journal.Entry) string {
	why := ""
	for _, e := range entries {
		switch {
		case e.Kind != "upgrade":
		case strings.HasPrefix(e.Summary, noteUpgradeStarting):
			why = ""
		case strings.HasPrefix(e.Summary, noteUpgradeFailed):
			why = e.Summary
		}
	}
	return why
}
