package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", config.DefaultAdminListen, "admin API address")
	configFlag(fs, admin, nil)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	client := &adminapi.Client{Addr: *admin}
	body, err := client.StatusJSON(context.Background())
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy status: %v\n", err)
		return 1
	}
	if *asJSON {
		var b bytes.Buffer
		if json.Indent(&b, body, "", "  ") != nil {
			b.Reset()
			b.Write(body) // as sent: the decode below would say what is wrong
		}
		stdout.Write(b.Bytes())
		return 0
	}
	var st adminapi.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "quorumproxy status: bad answer from %s: %v\n", *admin, err)
		return 1
	}
	printStatus(stdout, &st)
	return 0
}

func printCluster(w io.Writer, c *adminapi.ClusterStatus) {
	fmt.Fprintf(w, "\ncluster: node %s, %d peers, quorum %d", c.Node, c.Peers, c.Quorum)
	if c.Recovering {
		fmt.Fprint(w, ", RECOVERING (learning state from peers; not voting or routing)")
	}
	if c.Error != "" {
		fmt.Fprintf(w, ", error: %s", c.Error)
	}
	if c.StoreError != "" {
		fmt.Fprintf(w, ", STATE_DIR CANNOT BE WRITTEN (%s): not voting or routing until it can", c.StoreError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  PEER\tADDRESS\tSTATE\tCONFIG")
	for _, m := range c.Members {
		cfg := "same"
		if !m.ConfigMatch {
			cfg = "DIFFERENT"
		}
		name := m.Name
		if m.Self {
			name += " (self)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", name, m.Address, m.State, cfg)
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  SERVICE\tEPOCH\tPRIMARY\tFENCED\tROUTING\tLEASE\tMAX VOTED\tIN FLIGHT\tLAST DECISION")
	for _, s := range c.Services {
		lease := "none"
		if s.LeaseMS > 0 {
			lease = fmt.Sprintf("%.0fms", s.LeaseMS)
		}
		flight := "-"
		if s.Proposing > 0 {
			flight = fmt.Sprintf("epoch %d, %d vote(s)", s.Proposing, s.Votes)
		}
		routing := orNone(s.Routing)
		if s.Held != "" {
			routing = "held"
		}
		fenced := orNone(strings.Join(s.Fenced, ","))
		if s.Fencing != "" {
			fenced += " (" + s.Fencing + " pending)"
		}
		name := s.Service
		if s.Paused {
			name += " (PAUSED)"
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", name, s.Epoch, orNone(s.Primary), fenced, routing, lease, s.MaxVoted, flight, s.Decision)
	}
	tw.Flush()
	for _, s := range c.Services {
		if s.Held != "" {
			fmt.Fprintf(w, "  %s: %s\n", s.Service, s.Held)
		}
		if op := s.Operation; op != nil {
			what := op.Kind
			if op.Backend != "" {
				what += " of " + op.Backend
			}
			fmt.Fprintf(w, "  %s: last operation %d: %s: %s", s.Service, op.ID, what, op.State)
			if op.Detail != "" {
				fmt.Fprintf(w, ": %s", op.Detail)
			}
			fmt.Fprintln(w)
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func printStatus(w io.Writer, st *adminapi.Status) {
	fmt.Fprintf(w, "quorumproxy %s, up %s, config %s", st.Version, time.Since(st.Started).Round(time.Second), st.Config)
	if !st.LastReload.OK {
		fmt.Fprintf(w, " (last reload FAILED: %s)", st.LastReload.Error)
	}
	fmt.Fprintln(w)
	for _, s := range st.Services {
		target := s.Target
		if target == "" {
			target = "none"
		}
		fmt.Fprintf(w, "\nservice %s  listen %s  %s", s.Name, s.Listen, s.Mode)
		if s.Role != "" {
			fmt.Fprintf(w, "  role %s", s.Role)
		}
		fmt.Fprintf(w, "\n  target %s", target)
		if s.Why != "" {
			fmt.Fprintf(w, " (%s)", s.Why)
		}
		fmt.Fprintf(w, "  active %d  accepted %d  refused %d\n", s.Active, s.Accepted, s.Refused)
		for _, a := range s.Alerts {
			fmt.Fprintf(w, "  ALERT: %s\n", a)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  BACKEND\tADDRESS\tHEALTH\tROLE\tLAG\tCHECK\tACTIVE\tLAST CHANGE\tLAST ERROR")
		for _, b := range s.Backends {
			mark := " "
			if b.Name == s.Target {
				mark = "*"
			}
			h := b.HealthText()
			role := b.Role
			if b.Upstream != "" {
				role += " of " + b.Upstream // a cascade shows as a replica of a replica
			}
			fmt.Fprintf(tw, " %s%s\t%s\t%s\t%s\t%s\t%.1fms\t%d\t%s\t%s\n", mark, b.Name, b.Address, h, role,
				lagString(b), b.CheckLatencyMS, b.Active, changeString(b), b.LastError)
		}
		tw.Flush()
	}
	if st.Cluster != nil {
		printCluster(w, st.Cluster)
	}
}

func lagString(b adminapi.Backend) string {
	var parts []string
	if b.LagBytes >= 0 {
		parts = append(parts, fmt.Sprintf("%dB", b.LagBytes))
	}
	if b.LagSeconds >= 0 {
		parts = append(parts, fmt.Sprintf("%.1fs", b.LagSeconds))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "/")
}

func changeString(b adminapi.Backend) string {
	if b.LastChange.IsZero() {
		return "-"
	}
	s := time.Since(b.LastChange).Round(time.Second).String() + " ago"
	if b.Reason != "" {
		s += ": " + b.Reason
	}
	return s
}
