package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// cmdPause pauses (or resumes) the automatic decisions of one clustered
// service, or of every one: Patroni's pause. Each is a voted epoch; the
// command waits for each outcome unless -no-wait.
func cmdPause(verb string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin, tokenFile := adminFlags(fs)
	service := fs.String("service", "", "the service to "+verb+" (default: every service the cluster routes)")
	noWait, timeout := waitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "usage: quorumproxy %s [-service S] [-admin ADDR] [-token-file F] [-no-wait] [-timeout D]\n", verb)
		return 2
	}
	on := verb == "pause"
	return control(verb, *admin, *tokenFile, stdout, stderr, func(c *adminapi.Client) error {
		services := []string{*service}
		if *service == "" {
			st, err := c.Status(context.Background())
			if err != nil {
				return err
			}
			if st.Cluster == nil || len(st.Cluster.Services) == 0 {
				return errors.New("this proxy routes no service through a cluster")
			}
			services = services[:0]
			for _, s := range st.Cluster.Services {
				if s.Paused != on {
					services = append(services, s.Service)
				}
			}
			if len(services) == 0 {
				fmt.Fprintf(stdout, "every service is already %s\n", map[bool]string{true: "paused", false: "running (not paused)"}[on])
				return nil
			}
		}
		var errs []error
		for _, s := range services {
			a, err := c.Pause(context.Background(), s, on)
			if err == nil {
				fmt.Fprintln(stdout, a.Message)
				if !*noWait {
					err = c.WaitOperation(context.Background(), s, a.Operation, *timeout, stdout)
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s, err))
			}
		}
		return errors.Join(errs...)
	})
}
