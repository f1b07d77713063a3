package drill

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quorumproxy/quorumproxy/config"
)

// ConfigSummary is what a drill's record says of the configuration: the
// service, its backends and the settings that make its failover time.
type ConfigSummary struct {
	Service    string           `json:"service"`
	Listen     string           `json:"listen"`
	Role       string           `json:"role"`
	Check      string           `json:"check"` // the health check's kind
	Interval   string           `json:"interval"`
	Timeout    string           `json:"timeout"`
	Rise       int              `json:"rise"`
	Fall       int              `json:"fall"`
	SwitchHold string           `json:"switch_hold"`
	Failback   string           `json:"failback"`
	Hooks      []string         `json:"hooks,omitempty"` // the hooks configured (promote, fence, notify)
	Backends   []BackendSummary `json:"backends"`
	Cluster    *ClusterSummary  `json:"cluster,omitempty"` // nil: a proxy alone
}

// BackendSummary is one backend in a ConfigSummary.
type BackendSummary struct {
	Name     string `json:"name"`
	Address  string `json:"address"`
	Priority int    `json:"priority"`
}

// ClusterSummary is the cluster part of a ConfigSummary.
type ClusterSummary struct {
	Node         string `json:"node"`
	Size         int    `json:"size"`
	Quorum       int    `json:"quorum"`
	LeaseTimeout string `json:"lease_timeout"`
}

// Summarize the configuration of service svc of cfg for a drill's record.
func SummarizeConfig(cfg *config.Config, svc *config.Service) *ConfigSummary {
	role := string(svc.Role)
	if role == "" {
		role = string(config.RoleAny)
	}
	c := &ConfigSummary{Service: svc.Name, Listen: svc.Listen, Role: role, Check: string(svc.Health.Kind),
		Interval: svc.Health.Interval.String(), Timeout: svc.Health.Timeout.String(), Rise: svc.Health.Rise, Fall: svc.Health.Fall,
		SwitchHold: svc.SwitchHold.String(), Failback: string(svc.Failback)}
	for _, h := range []struct {
		name string
		cmd  []string
	}{{"promote", svc.Hooks.Promote}, {"fence", svc.Hooks.Fence}, {"notify", svc.Hooks.Notify}} {
		if len(h.cmd) > 0 {
			c.Hooks = append(c.Hooks, h.name)
		}
	}
	for _, b := range svc.Backends {
		c.Backends = append(c.Backends, BackendSummary{Name: b.Name, Address: b.Address, Priority: b.Priority})
	}
	if cl := cfg.Cluster; cl != nil {
		c.Cluster = &ClusterSummary{Node: cl.NodeName, Size: len(cl.Peers), Quorum: len(cl.Peers)/2 + 1, LeaseTimeout: cl.LeaseTimeout.String()}
	}
	return c
}

// ServerVersions asks each backend of o's service, directly and with the
// drill's login, for its server's version (PostgreSQL's server_version,
// Redis's redis_version, MySQL's VERSION()); a backend that does not answer
// within timeout is left out. Best effort: the record only shows them.
func ServerVersions(ctx context.Context, o Options, timeout time.Duration) map[string]string {
	out := map[string]string{}
	for _, b := range o.Service.Backends {
		vctx, cancel := context.WithTimeout(ctx, timeout)
		v, err := serverVersion(vctx, o, b.Address)
		cancel()
		if err == nil && v != "" {
			out[b.Name] = v
		}
	}
	return out
}

func serverVersion(ctx context.Context, o Options, addr string) (string, error) {
	switch o.Service.Health.Kind {
	case config.KindPostgres:
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", err
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return "", err
		}
		cfg, err := pgx.ParseConfig("")
		if err != nil {
			return "", err
		}
		cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = host, uint16(p), o.User, o.Password, o.Database
		cfg.RuntimeParams["application_name"] = "quorumproxy drill"
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return "", err
		}
		defer c.Close(context.Background())
		var v string
		if err := c.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
			return "", err
		}
		return "PostgreSQL " + v, nil
	case config.KindRedis:
		c := redis.NewClient(&redis.Options{Addr: addr, Username: o.User, Password: o.Password, MaxRetries: -1, PoolSize: 1, DisableIdentity: true})
		defer c.Close()
		info, err := c.Info(ctx, "server").Result()
		if err != nil {
			return "", err
		}
		for _, l := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "redis_version:"); ok {
				return "Redis " + v, nil
			}
		}
		return "", nil
	case config.KindMySQL:
		cfg := mysql.NewConfig()
		cfg.Net, cfg.Addr, cfg.User, cfg.Passwd, cfg.DBName = "tcp", addr, o.User, o.Password, o.Database
		conn, err := mysql.NewConnector(cfg)
		if err != nil {
			return "", err
		}
		db := sql.OpenDB(conn)
		defer db.Close()
		db.SetMaxOpenConns(1)
		var v string
		if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&v); err != nil {
			return "", err
		}
		return "MySQL/MariaDB " + v, nil
	}
	return "", nil
}

// Markdown writes the series as a dated record an operator can file: when,
// where and with what it ran, the configuration, each run's timeline, and
// the aggregate.
func (s *Series) Markdown(w io.Writer) {
	a := s.Aggregate
	fmt.Fprintf(w, "# Failover drill: service `%s`, %s\n\n", s.Service, s.Started.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "| | |\n|---|---|\n")
	fmt.Fprintf(w, "| Date (UTC) | %s to %s |\n", s.Started.UTC().Format(time.RFC3339), s.Finished.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "| quorumproxy | %s |\n", orUnknown(s.Version))
	fmt.Fprintf(w, "| Host | %s |\n", orUnknown(s.Host))
	fmt.Fprintf(w, "| Service | `%s` (%s) through %s |\n", s.Service, s.Kind, s.Listen)
	fmt.Fprintf(w, "| Failure | %s |\n", mdFailure(s))
	fmt.Fprintf(w, "| Runs | %d, %d recovered |\n", a.Runs, a.Recovered)
	fmt.Fprintf(w, "| RTO | p50 %s, p90 %s, max %s |\n", seconds(a.RTOP50, ""), seconds(a.RTOP90, ""), seconds(a.RTOMax, ""))
	fmt.Fprintf(w, "| RPO | %s |\n", rpoText(a))
	if s.Stopped != "" {
		fmt.Fprintf(w, "| Stopped early | %s |\n", mdCell(s.Stopped))
	}

	fmt.Fprintf(w, "\n## Configuration\n\n")
	if c := s.Config; c != nil {
		fmt.Fprintf(w, "- Service `%s`, listen %s, role %s, active-passive\n", c.Service, c.Listen, c.Role)
		fmt.Fprintf(w, "- Health check: %s, interval %s, timeout %s, rise %d, fall %d\n", c.Check, c.Interval, c.Timeout, c.Rise, c.Fall)
		fmt.Fprintf(w, "- switch_hold %s, failback %s\n", c.SwitchHold, c.Failback)
		if len(c.Hooks) > 0 {
			fmt.Fprintf(w, "- Hooks: %s\n", strings.Join(c.Hooks, ", "))
		} else {
			fmt.Fprintf(w, "- Hooks: none\n")
		}
		if cl := c.Cluster; cl != nil {
			fmt.Fprintf(w, "- Cluster: %d proxies (quorum %d), this drill through `%s`; lease_timeout %s\n", cl.Size, cl.Quorum, cl.Node, cl.LeaseTimeout)
		} else {
			fmt.Fprintf(w, "- No cluster: the proxy decides alone\n")
		}
		fmt.Fprintf(w, "\n| Backend | Address | Priority | Server |\n|---|---|---|---|\n")
		for _, b := range c.Backends {
			fmt.Fprintf(w, "| %s | %s | %d | %s |\n", b.Name, b.Address, b.Priority, orDash(s.ServerVersions[b.Name]))
		}
	} else {
		fmt.Fprintf(w, "Not recorded.\n")
	}

	fmt.Fprintf(w, "\n## Runs\n\nTimes are seconds after the failure. Down: this proxy's checks first saw the old primary down (- when\n"+
		"they never did: a switchover, or a server back before they noticed); Decided: a new target (in a cluster, a new epoch);\n"+
		"Routed: this proxy forwards to the new primary; RTO: writes acknowledged again; Unavailable: the longest pause in\n"+
		"acknowledgements; Lost: acknowledged writes a read-back through the proxy no longer finds.\n\n")
	fmt.Fprintf(w, "| Run | Failure at (UTC) | Failure | From | To | Down | Decided | Routed | RTO | Unavailable | Acknowledged | Lost |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range s.Runs {
		at := "-"
		if !r.Started.IsZero() {
			at = r.Started.UTC().Format("15:04:05.000")
		}
		window := "-"
		if r.Recovered {
			window = seconds(r.Window, "")
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n", r.Index, at, mdCell(r.Failure),
			orDash(r.OldTarget), orDash(r.NewTarget), seconds(r.DownAt, "+"), seconds(r.DecidedAt, "+"), seconds(r.RoutedAt, "+"),
			rtoText(r), window, r.Acked, r.Lost)
	}
	var lost, errs []string
	for _, r := range s.Runs {
		if r.Lost > 0 {
			lost = append(lost, fmt.Sprintf("- run %d: %d lost, the oldest acknowledged %.3fs before the failure; ids %v", r.Index, r.Lost, r.RPOSeconds, r.LostIDs))
		}
		for _, e := range r.Errors {
			errs = append(errs, fmt.Sprintf("- run %d: `%s`", r.Index, strings.ReplaceAll(e, "`", "'")))
		}
	}

	fmt.Fprintf(w, "\n## Result\n\n")
	fmt.Fprintf(w, "- RTO (until writes were acknowledged again), over %d recovered of %d runs: p50 %s, p90 %s, max %s\n",
		a.Recovered, a.Runs, seconds(a.RTOP50, ""), seconds(a.RTOP90, ""), seconds(a.RTOMax, ""))
	fmt.Fprintf(w, "- RPO: %s\n", rpoText(a))
	fmt.Fprintf(w, "- Writes: %d acknowledged, %d failed during the failovers\n", a.Acked, a.Failed)
	for _, l := range lost {
		fmt.Fprintln(w, l)
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "\nWrite errors seen (the first of each kind):\n\n%s\n", strings.Join(errs, "\n"))
	}
}

func mdFailure(s *Series) string {
	if strings.HasPrefix(s.Failure, "switchover") {
		return mdCell(s.Failure)
	}
	return "fail command `" + strings.ReplaceAll(s.Failure, "`", "'") + "`"
}

func rpoText(a Aggregate) string {
	if a.Lost == 0 {
		return fmt.Sprintf("0 of %d acknowledged writes lost", a.Acked)
	}
	return fmt.Sprintf("%d of %d acknowledged writes LOST (at most %.3fs of writes in one run)", a.Lost, a.Acked, a.RPOMax)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// mdCell keeps text inside one Markdown table cell.
func mdCell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}
