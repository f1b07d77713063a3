package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
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
	return control("switchover", *admin, *tokenFile, stdout, stderr, func(token string) error {
		a, err := postAdmin(*admin, token, "/api/v1/switchover", url.Values{"service": {*service}, "to": {*to}}, stdout)
		if err != nil || *noWait {
			return err
		}
		return waitOperation(*admin, *service, a.Operation, *timeout, stdout)
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
	return control(verb, *admin, *tokenFile, stdout, stderr, func(token string) error {
		a, err := postAdmin(*admin, token, "/api/v1/"+verb, url.Values{"service": {*service}, "backend": {*backend}}, stdout)
		if err != nil || !voted || *noWait {
			return err
		}
		return waitOperation(*admin, *service, a.Operation, *timeout, stdout)
	})
}

func adminFlags(fs *flag.FlagSet) (admin, tokenFile *string) {
	admin = fs.String("admin", config.DefaultAdminListen, "admin API address")
	tokenFile = fs.String("token-file", "", "file holding the admin token ([admin] token_file)")
	configFlag(fs, admin, tokenFile)
	return admin, tokenFile
}

// control reads the token and runs one admin call; exit 1 on any error.
func control(verb, admin, tokenFile string, stdout, stderr io.Writer, call func(token string) error) int {
	var token string
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "quorumproxy %s: %v\n", verb, err)
			return 1
		}
		token = strings.TrimSpace(string(b))
	}
	if err := call(token); err != nil {
		fmt.Fprintf(stderr, "quorumproxy %s: %v\n", verb, err)
		return 1
	}
	return 0
}

// postSwitchover asks the admin API at admin for a voted switchover and
// copies the answer to out, without waiting for the outcome.
func postSwitchover(admin, token, service, to string, out io.Writer) error {
	_, err := postAdmin(admin, token, "/api/v1/switchover", url.Values{"service": {service}, "to": {to}}, out)
	return err
}

// postAdmin posts form to a state-changing admin endpoint, prints the
// answer's message to out and returns the answer; anything but 202
// Accepted is an error with the answer.
func postAdmin(admin, token, path string, form url.Values, out io.Writer) (controlAnswer, error) {
	var a controlAnswer
	req, err := http.NewRequest(http.MethodPost, adminURL(admin)+path, strings.NewReader(form.Encode()))
	if err != nil {
		return a, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusAccepted {
		return a, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return a, fmt.Errorf("answer %q: %w", body, err)
	}
	fmt.Fprintln(out, a.Message)
	return a, nil
}

func adminURL(admin string) string {
	if strings.Contains(admin, "://") {
		return admin
	}
	return "http://" + admin
}

// waitOperation polls the proxy's /status until the cluster operation id
// of service is done (nil) or failed, or timeout passes (an error that
// says where it stands). It prints each new state to out.
func waitOperation(admin, service string, id uint64, timeout time.Duration, out io.Writer) error {
	if id == 0 {
		return nil // done at once, on that proxy alone
	}
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		op, err := fetchOperation(client, admin, service)
		switch {
		case err != nil:
			last = err.Error()
		case op == nil || op.ID != id:
			return fmt.Errorf("operation %d is no longer the last one on that proxy: another request replaced it", id)
		default:
			line := fmt.Sprintf("%s of %s: %s", op.Kind, op.Backend, op.State)
			if op.Detail != "" {
				line += ": " + op.Detail
			}
			if line != last {
				fmt.Fprintln(out, line)
				last = line
			}
			switch op.State {
			case "done":
				return nil
			case "failed":
				return fmt.Errorf("%s of %q in %q failed: %s", op.Kind, op.Backend, service, op.Detail)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no outcome within %v; last: %s (quorumproxy status shows more)", timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func fetchOperation(client *http.Client, admin, service string) (*operationView, error) {
	resp, err := client.Get(adminURL(admin) + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st statusView
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if st.Cluster == nil {
		return nil, fmt.Errorf("the proxy at %s runs no cluster", admin)
	}
	for _, s := range st.Cluster.Services {
		if s.Service == service {
			return s.Operation, nil
		}
	}
	return nil, fmt.Errorf("the cluster does not route service %q", service)
}
