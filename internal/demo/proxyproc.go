package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// serviceConf is the part of a [[service]] table the demo varies.
type serviceConf struct {
	Name, Listen string
	Role         string // "" = any
	Kind         string // health kind
	Interval     time.Duration
	Timeout      time.Duration
	Rise, Fall   int
	User         string
	Database     string
	PasswordEnv  string
	SwitchHold   time.Duration
	Promote      []string // promote hook argv
	HookTimeout  time.Duration
	Backends     []backendConf
}

type backendConf struct {
	Name, Address string
	Priority      int
}

// clusterConf is the [cluster] table of one proxy of part 3.
type clusterConf struct {
	Node          string
	Bind          string // gossip host:port
	SecretKeyFile string
	StateDir      string
	LeaseTimeout  time.Duration
	SwitchHold    time.Duration
	Peers         []peerConf // every proxy, this one included
}

type peerConf struct{ Name, Address string }

// renderClusterConfig is renderConfig with a [cluster] table: one file per
// proxy, each with its own node_name, admin address and state_dir.
func renderClusterConfig(admin string, c clusterConf, svcs ...serviceConf) string {
	var b strings.Builder
	q := strconv.Quote
	b.WriteString(renderConfig(admin, svcs...))
	fmt.Fprintf(&b, "\n[cluster]\nnode_name = %s\nbind = %s\nsecret_key_file = %s\nstate_dir = %s\n",
		q(c.Node), q(c.Bind), q(c.SecretKeyFile), q(c.StateDir))
	fmt.Fprintf(&b, "lease_timeout = %s\nswitch_hold = %s\n", q(c.LeaseTimeout.String()), q(c.SwitchHold.String()))
	for _, p := range c.Peers {
		fmt.Fprintf(&b, "\n[[cluster.peer]]\nname = %s\naddress = %s\n", q(p.Name), q(p.Address))
	}
	return b.String()
}

// renderConfig writes a quorumproxy TOML file for one standalone proxy.
func renderConfig(admin string, svcs ...serviceConf) string {
	var b strings.Builder
	q := strconv.Quote // TOML basic strings accept Go's quoting of plain text
	fmt.Fprintf(&b, "[admin]\nlisten = %s\n\n[log]\nlevel = \"info\"\n\n[proxy]\ndrain_timeout = \"1s\"\n", q(admin))
	for _, s := range svcs {
		fmt.Fprintf(&b, "\n[[service]]\nname = %s\nlisten = %s\nmode = \"active-passive\"\n", q(s.Name), q(s.Listen))
		fmt.Fprintf(&b, "failback = \"manual\"\non_backend_down = \"close\"\nconnect_timeout = \"1s\"\n")
		if s.Role != "" {
			fmt.Fprintf(&b, "role = %s\n", q(s.Role))
		}
		if s.SwitchHold > 0 {
			fmt.Fprintf(&b, "switch_hold = %s\n", q(s.SwitchHold.String()))
		}
		fmt.Fprintf(&b, "\n[service.health]\nkind = %s\ninterval = %s\ntimeout = %s\nrise = %d\nfall = %d\n",
			q(s.Kind), q(s.Interval.String()), q(s.Timeout.String()), s.Rise, s.Fall)
		if s.User != "" {
			fmt.Fprintf(&b, "user = %s\n", q(s.User))
		}
		if s.Database != "" {
			fmt.Fprintf(&b, "database = %s\n", q(s.Database))
		}
		if s.PasswordEnv != "" {
			fmt.Fprintf(&b, "password_env = %s\n", q(s.PasswordEnv))
		}
		if len(s.Promote) > 0 {
			quoted := make([]string, len(s.Promote))
			for i, a := range s.Promote {
				quoted[i] = q(a)
			}
			fmt.Fprintf(&b, "\n[service.hooks]\npromote = [%s]\n", strings.Join(quoted, ", "))
			if s.HookTimeout > 0 {
				fmt.Fprintf(&b, "timeout = %s\n", q(s.HookTimeout.String()))
			}
		}
		for _, be := range s.Backends {
			fmt.Fprintf(&b, "\n[[service.backend]]\nname = %s\naddress = %s\npriority = %d\n", q(be.Name), q(be.Address), be.Priority)
		}
	}
	return b.String()
}

// proxyProc is one running `quorumproxy run`.
type proxyProc struct {
	name    string
	admin   string // host:port of its admin API
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been reaped
	waitErr error         // valid after exited is closed
	killed  bool          // killed on purpose: stop has nothing to do
	client  *http.Client
	api     *adminapi.Client // over client
}

// kill sends SIGKILL (part 3 takes proxies away) and waits for the exit.
func (p *proxyProc) kill() error {
	p.killed = true
	p.client.CloseIdleConnections()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("proxy %s: SIGKILL: %w", p.name, err)
	}
	<-p.exited
	return nil
}

// startProxy writes config into dir and starts the proxy with env added to
// ours; it returns once the admin API answers.
func startProxy(ctx context.Context, bin, dir, name, admin, config string, env []string) (*proxyProc, error) {
	cfgPath := filepath.Join(dir, name+".toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		return nil, fmt.Errorf("proxy %s: writing config: %w", name, err)
	}
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", name, err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(bin, "run", "-config", cfgPath)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group so a terminal's Ctrl-C reaches the demo first
	// and the demo stops it in order; killed with us if we die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("proxy %s: starting %s: %w", name, bin, err)
	}
	p := &proxyProc{name: name, admin: admin, logPath: logPath, cmd: cmd, exited: make(chan struct{}),
		client: &http.Client{Timeout: time.Second}}
	p.api = &adminapi.Client{Addr: admin, HTTP: p.client}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := p.status(ctx); err == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("proxy %s exited at start (%v)\n%s", name, p.waitErr, p.logTail(20))
		case <-ctx.Done():
			_ = p.stop() // the error below says more
			return nil, fmt.Errorf("proxy %s: admin API %s did not answer: %w\n%s", name, admin, ctx.Err(), p.logTail(20))
		case <-tick.C:
		}
	}
}

// stop drains the proxy with SIGTERM and kills it if it takes too long. An
// exit status other than 0 (a race report under -race exits 66) is an error.
func (p *proxyProc) stop() error {
	if p.killed {
		return nil
	}
	p.client.CloseIdleConnections()
	select {
	case <-p.exited:
		return fmt.Errorf("proxy %s exited before it was stopped (%v)\n%s", p.name, p.waitErr, p.logTail(20))
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("proxy %s did not stop within 10s of SIGTERM: killed\n%s", p.name, p.logTail(20))
	}
	if p.waitErr != nil {
		return fmt.Errorf("proxy %s: exit after SIGTERM: %v\n%s", p.name, p.waitErr, p.logTail(20))
	}
	return nil
}

// logTail returns the last n lines of the proxy's log, or its first race
// report when it has one (the log goes with the temp dir).
func (p *proxyProc) logTail(n int) string {
	data, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if i := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "WARNING: DATA RACE") }); i >= 0 {
		lines = lines[i:min(len(lines), i+120)]
	} else if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- proxy log %s ---\n%s", filepath.Base(p.logPath), strings.Join(lines, "\n"))
}

func (p *proxyProc) status(ctx context.Context) (*adminapi.Status, error) {
	st, err := p.api.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", p.name, err)
	}
	return st, nil
}

// waitService polls the proxy until cond holds for the service.
func (p *proxyProc) waitService(ctx context.Context, service string, limit time.Duration, what string, cond func(*adminapi.Service) bool) (*adminapi.Service, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last *adminapi.Service
	for {
		if st, err := p.status(ctx); err == nil {
			if s := st.Service(service); s != nil {
				last = s
				if cond(s) {
					return s, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("proxy %s service %q: waiting %s for %s: %w (last status: %s)", p.name, service, limit, what, ctx.Err(), describe(last))
		case <-p.exited:
			return nil, fmt.Errorf("proxy %s exited (%v)\n%s", p.name, p.waitErr, p.logTail(20))
		case <-tick.C:
		}
	}
}

// describe is a one-line summary of a service's status.
func describe(s *adminapi.Service) string {
	if s == nil {
		return "none"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "target %q", s.Target)
	if s.Why != "" {
		fmt.Fprintf(&b, " (%s)", s.Why)
	}
	for _, be := range s.Backends {
		fmt.Fprintf(&b, "; %s %s %s", be.Name, be.Health, be.Role)
	}
	return b.String()
}

// printStatus shows a few fields of each proxy's /status.
func (d *demo) printStatus(ctx context.Context, label, service string, proxies []*proxyProc) {
	for _, p := range proxies {
		st, err := p.status(ctx)
		if err != nil {
			d.tl.printf("/status %s: %v", label, err)
			continue
		}
		s := st.Service(service)
		if s == nil {
			d.tl.printf("/status %s: proxy %s has no service %q", label, p.name, service)
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "/status of %s %s: service %q listen %s target %q", p.name, label, s.Name, s.Listen, s.Target)
		if s.Why != "" {
			fmt.Fprintf(&b, " (why: %s)", s.Why)
		}
		fmt.Fprintf(&b, " accepted %d refused %d active %d", s.Accepted, s.Refused, s.Active)
		for _, a := range s.Alerts {
			fmt.Fprintf(&b, "\n  ALERT %s", a)
		}
		for _, be := range s.Backends {
			lag := "?"
			if be.LagBytes >= 0 {
				lag = fmt.Sprintf("%dB", be.LagBytes)
			}
			fmt.Fprintf(&b, "\n  %-3s %-15s %-7s %-8s lag %-6s check %5.1fms active %-3d dial-failures %-3d bytes in/out %d/%d",
				be.Name, be.Address, be.Health, be.Role, lag, be.CheckLatencyMS, be.Active, be.DialFailures, be.BytesIn, be.BytesOut)
			if be.LastError != "" {
				fmt.Fprintf(&b, "\n      last error: %s", be.LastError)
			}
		}
		d.tl.printf("%s", b.String())
	}
}
