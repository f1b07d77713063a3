package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/daemon"
	"github.com/quorumproxy/quorumproxy/internal/drill"
)

const drillUsage = `usage: quorumproxy drill -config FILE -service S [flags] -- FAIL-COMMAND [ARGS...]
       quorumproxy drill -config FILE -service S -switchover-to B [flags]
       quorumproxy drill -config FILE -service S -switchover -repeat N [flags]

A failover drill: writes unique ids through the proxy, fails the primary
(by running FAIL-COMMAND, an argv run without a shell, or by a voted
switchover of a clustered service), and reports the timeline read from the
proxy's admin API (primary seen down, decision, routing to the new primary,
first acknowledged write = RTO) and the acknowledged writes that a read-back
through the proxy no longer finds (RPO). Writes go to the table
quorumproxy_drill (postgres, mysql; created if missing, this run's rows
deleted at the end) or to keys quorumproxy:drill:RUN:ID that expire after an
hour (redis). Credentials default to the service's [service.health] ones; the
user must be allowed to write.

-repeat N runs N drills one after another, waiting between them (up to
-settle) until the service is routed again with every backend up, and
reports each run and the RTO p50/p90/max and the acknowledged writes lost in
all. FAIL-COMMAND finds QP_DRILL_RUN (1, 2, ...), QP_DRILL_SERVICE,
QP_DRILL_TARGET and QP_DRILL_TARGET_ADDRESS (the backend the proxy targets
when the run starts) in its environment. -switchover switches over to
another healthy backend at each run (with two: back and forth);
-switchover-to B with -repeat alternates between B and the first primary.
-report FILE.md writes a dated Markdown record of the drill to file.
`

func cmdDrill(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, drillUsage, "\nflags:\n"); fs.PrintDefaults() }
	cfgPath := fs.String("config", "", "the proxy's configuration file (required)")
	service := fs.String("service", "", "active-passive service to drill (required)")
	admin := fs.String("admin", "", "admin API address (default: [admin] listen of the config)")
	user := fs.String("user", "", "user to write as (default: the service's health user)")
	pwFile := fs.String("password-file", "", "file holding the password (default: the service's health password)")
	database := fs.String("database", "", "database (default: the service's health database)")
	warmup := fs.Duration("warmup", 2*time.Second, "writes before the failure")
	after := fs.Duration("after", 2*time.Second, "writes after the first good write")
	timeout := fs.Duration("timeout", 60*time.Second, "give up when no write succeeds this long after the failure")
	switchTo := fs.String("switchover-to", "", "fail by a voted switchover to this backend (clustered services)")
	alternate := fs.Bool("switchover", false, "fail by a voted switchover to another healthy backend at each run (clustered services)")
	repeat := fs.Int("repeat", 1, "run this many drills one after another and report the aggregate")
	settle := fs.Duration("settle", 60*time.Second, "between runs, wait at most this long for the service to be routed with every backend up")
	reportPath := fs.String("report", "", "write a dated Markdown record of the drill to this file")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	modes := 0
	for _, on := range []bool{*switchTo != "", *alternate, fs.NArg() > 0} {
		if on {
			modes++
		}
	}
	if *cfgPath == "" || *service == "" || modes != 1 || *repeat < 1 || *settle <= 0 {
		fs.Usage()
		return 2
	}
	cfg, _, err := daemon.LoadConfig(*cfgPath, true) // the drill reads what it needs itself
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy drill: %v\n", err)
		return 1
	}
	svc := cfg.Service(*service)
	if svc == nil {
		fmt.Fprintf(stderr, "quorumproxy drill: %s: no service %q\n", *cfgPath, *service)
		return 1
	}
	o := drill.Options{Service: svc, Admin: cfg.Admin.Listen, User: svc.Health.User,
		Database: svc.Health.Database, Warmup: *warmup, After: *after, Timeout: *timeout, SwitchTo: *switchTo, Fail: fs.Args()}
	if *admin != "" {
		o.Admin = *admin
	}
	if cfg.Admin.TokenFile != "" {
		if b, err := os.ReadFile(cfg.Admin.TokenFile); err == nil {
			o.Token = strings.TrimSpace(string(b))
		} else if o.SwitchTo != "" || *alternate {
			fmt.Fprintf(stderr, "quorumproxy drill: admin token_file: %v\n", err)
			return 1
		}
	}
	if *user != "" {
		o.User = *user
	}
	if *database != "" {
		o.Database = *database
	}
	if *pwFile != "" {
		b, err := os.ReadFile(*pwFile)
		if err != nil {
			fmt.Fprintf(stderr, "quorumproxy drill: -password-file: %v\n", err)
			return 1
		}
		o.Password = strings.TrimRight(string(b), "\r\n")
	} else if o.Password, err = svc.Health.Password(); err != nil {
		fmt.Fprintf(stderr, "quorumproxy drill: service %q health %v\n", svc.Name, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	series := *repeat > 1 || *reportPath != ""
	var versions map[string]string
	if series {
		versions = drill.ServerVersions(ctx, o, 3*time.Second)
	}
	sr, err := drill.Repeat(ctx, o, drill.RepeatOptions{Runs: *repeat, Alternate: *alternate, Settle: *settle}, stderr)
	if sr == nil {
		fmt.Fprintf(stderr, "quorumproxy drill: %v\n", err)
		return 1
	}
	sr.Version, sr.Config, sr.ServerVersions = version, drill.SummarizeConfig(cfg, svc), versions
	sr.Host, _ = os.Hostname()
	switch {
	case *repeat > 1 && *asJSON:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(sr)
	case *repeat > 1:
		sr.Print(stdout)
	case len(sr.Runs) == 0:
	case *asJSON:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(sr.Runs[0])
	default:
		sr.Runs[0].Print(stdout)
	}
	code := 0
	if *reportPath != "" {
		if werr := writeDrillReport(*reportPath, sr); werr != nil {
			fmt.Fprintf(stderr, "quorumproxy drill: -report: %v\n", werr)
			code = 1
		} else {
			fmt.Fprintf(stderr, "quorumproxy drill: record written to %s\n", *reportPath)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy drill: %v\n", err)
		return 1
	}
	if sr.Aggregate.Recovered != *repeat {
		return 1
	}
	return code
}

// writeDrillReport writes the series' Markdown record to path.
func writeDrillReport(path string, sr *drill.Series) error {
	var b strings.Builder
	sr.Markdown(&b)
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
