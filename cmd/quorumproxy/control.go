package main

import (
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
// backend; the cluster votes on it like on a failover.
func cmdSwitchover(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("switchover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin, tokenFile := adminFlags(fs)
	service := fs.String("service", "", "service to switch (required)")
	to := fs.String("to", "", "backend to switch to (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *service == "" || *to == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: quorumproxy switchover -service S -to BACKEND [-admin ADDR] [-token-file F]")
		return 2
	}
	return control("switchover", *admin, *tokenFile, stdout, stderr, func(token string) error {
		return postSwitchover(*admin, token, *service, *to, stdout)
	})
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *service == "" || *backend == "" || fs.NArg() != 0 {
		fmt.Fprintf(stderr, "usage: quorumproxy %s -service S -backend B [-admin ADDR] [-token-file F]\n", verb)
		return 2
	}
	return control(verb, *admin, *tokenFile, stdout, stderr, func(token string) error {
		return postAdmin(*admin, token, "/api/v1/"+verb, url.Values{"service": {*service}, "backend": {*backend}}, stdout)
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
// copies the answer to out.
func postSwitchover(admin, token, service, to string, out io.Writer) error {
	return postAdmin(admin, token, "/api/v1/switchover", url.Values{"service": {service}, "to": {to}}, out)
}

// postAdmin posts form to a state-changing admin endpoint and copies the
// answer to out; anything but 202 Accepted is an error with the answer.
func postAdmin(admin, token, path string, form url.Values, out io.Writer) error {
	base := admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	out.Write(body)
	return nil
}
