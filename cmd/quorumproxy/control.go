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
)

// cmdSwitchover asks a running proxy to move a clustered service to another
// backend; the cluster votes on it like on a failover.
func cmdSwitchover(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("switchover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9090", "admin API address")
	tokenFile := fs.String("token-file", "", "file holding the admin token ([admin] token_file)")
	service := fs.String("service", "", "service to switch (required)")
	to := fs.String("to", "", "backend to switch to (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *service == "" || *to == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: quorumproxy switchover -service S -to BACKEND [-admin ADDR] [-token-file F]")
		return 2
	}
	var token string
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "quorumproxy switchover: %v\n", err)
			return 1
		}
		token = strings.TrimSpace(string(b))
	}
	if err := postSwitchover(*admin, token, *service, *to, stdout); err != nil {
		fmt.Fprintf(stderr, "quorumproxy switchover: %v\n", err)
		return 1
	}
	return 0
}

// postSwitchover asks the admin API at admin for a voted switchover and
// copies the answer to out.
func postSwitchover(admin, token, service, to string, out io.Writer) error {
	base := admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	form := url.Values{"service": {service}, "to": {to}}
	req, err := http.NewRequest(http.MethodPost, base+"/api/v1/switchover", strings.NewReader(form.Encode()))
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
