package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// cmdSwitchover asks a running proxy to move a clustered service to another
// backend; the cluster votes on it like on a failover. It waits for the
// outcome unless -no-wait.
func cmdSwitchover(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("switchover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin, tokenFile := adminFlags(fs)
	service := fs.String("service", "", "service to switch (required)")
	to := fs.String("to", "", "backend to switch to (required)")
	noWait, timeout := waitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *service == "" || *to == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: quorumproxy switchover -service S -to BACKEND [-admin ADDR] [-token-file F] [-no-wait] [-timeout D]")
		return 2
	}
	return control("switchover", *admin, *tokenFile, stdout, stderr, func(c *adminapi.Client) error {
		a, err := c.Switchover(context.Background(), *service, *to)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, a.Message)
		if *noWait {
			return nil
		}
		return c.WaitOperation(context.Background(), *service, a.Operation, *timeout, stdout)
	})
}

// waitFlags are the flags of the commands that wait for a cluster's
// decision and its actions on the databases.
func waitFlags(fs *flag.FlagSet) (noWait *bool, timeout *time.Duration) {
	noWait = fs.Bool("no-wait", false, "return once the request is accepted, without waiting for the outcome")
	timeout = fs.Duration("timeout", 2*time.Minute, "how long to wait for the outcome (the vote, the hooks, the role the new primary reports)")
	return noWait, timeout
}

// cmdBackendControl runs fence, unfence, drain and undrain: it posts
// -service and -backend to /api/v1/VERB. A fenced backend is no failover
// candidate until it is unfenced, and fencing the primary moves the service
// (both voted); a drained backend takes no new connections on this proxy
// while its open sessions run on (local: run it on each proxy).
func cmdBackendControl(verb string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin, tokenFile := adminFlags(fs)
	service := fs.String("service", "", "service of the backend (required)")
	backend := fs.String("backend", "", "backend to "+verb+" (required)")
	voted := verb == "fence" || verb == "unfence"
	var noWait *bool
	var timeout *time.Duration
	usage := fmt.Sprintf("usage: quorumproxy %s -service S -backend B [-admin ADDR] [-token-file F]", verb)
	if voted {
		noWait, timeout = waitFlags(fs)
		usage += " [-no-wait] [-timeout D]"
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *service == "" || *backend == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	return control(verb, *admin, *tokenFile, stdout, stderr, func(c *adminapi.Client) error {
		a, err := c.BackendControl(context.Background(), verb, *service, *backend)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, a.Message)
		if !voted || *noWait {
			return nil
		}
		return c.WaitOperation(context.Background(), *service, a.Operation, *timeout, stdout)
	})
}

func adminFlags(fs *flag.FlagSet) (admin, tokenFile *string) {
	admin = fs.String("admin", config.DefaultAdminListen, "admin API address")
	tokenFile = fs.String("token-file", "", "file holding the admin token ([admin] token_file)")
	configFlag(fs, admin, tokenFile)
	return admin, tokenFile
}

// control reads the token and runs one admin call; exit 1 on any error.
func control(verb, admin, tokenFile string, stdout, stderr io.Writer, call func(c *adminapi.Client) error) int {
	c := &adminapi.Client{Addr: admin, HTTP: &http.Client{Timeout: 10 * time.Second}}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "quorumproxy %s: %v\n", verb, err)
			return 1
		}
		c.Token = strings.TrimSpace(string(b))
	}
	if err := call(c); err != nil {
		fmt.Fprintf(stderr, "quorumproxy %s: %v\n", verb, err)
		return 1
	}
	return 0
}
