package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// cmdHistory prints what a proxy decided and did: committed records, hook
// runs with how they ended, operators' requests, reloads and a lone
// proxy's target changes.
func cmdHistory(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", config.DefaultAdminListen, "admin API address")
	configFlag(fs, admin, nil)
	service := fs.String("service", "", "only this service")
	n := fs.Int("n", 50, "the last N entries (0: all that are kept)")
	asJSON := fs.Bool("json", false, "print the entries as JSON")
	output := fs.Bool("output", false, "also print each hook's output (its tail)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 || *n < 0 {
		fmt.Fprintln(stderr, "usage: quorumproxy history [-config FILE | -admin ADDR] [-service S] [-n N] [-json] [-output]")
		return 2
	}
	client := &adminapi.Client{Addr: *admin}
	h, err := client.History(context.Background(), *service, *n)
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy history: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(h)
		return 0
	}
	if len(h.Entries) == 0 {
		fmt.Fprintln(stdout, "no history yet")
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSERVICE\tKIND\tEPOCH\tWHAT")
	for _, e := range h.Entries {
		epoch := ""
		if e.Epoch > 0 {
			epoch = fmt.Sprint(e.Epoch)
		}
		what := e.Summary
		if e.Remote != "" {
			what += " [from " + e.Remote + "]"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), orNone(e.Service), e.Kind, epoch, what)
		if *output && strings.TrimSpace(e.Output) != "" {
			for _, l := range strings.Split(strings.TrimRight(e.Output, "\n"), "\n") {
				fmt.Fprintf(tw, "\t\t\t\t  | %s\n", l)
			}
		}
	}
	tw.Flush()
	return 0
}
