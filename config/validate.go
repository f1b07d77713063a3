package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// derive applies the defaults that depend on other keys, where the file
// leaves the key out.
func (d *decoder) derive(cfg *Config) {
	if c := cfg.Cluster; c != nil {
		// Gossip listens, and says it listens, where the other proxies
		// were told to find this one: its own [[cluster.peer]] address.
		// An empty value, as the example file writes advertise, is the default too.
		self := c.selfAddress()
		if c.Bind == "" {
			c.Bind = self
		}
		if c.Advertise == "" {
			c.Advertise = self
		}
		if c.Network == NetworkWAN {
			if !d.present[joinPath("cluster", "gossip_interval")] {
				c.GossipInterval = wanGossipInterval
			}
			if !d.present[joinPath("cluster", "probe_interval")] {
				c.ProbeInterval = wanProbeInterval
			}
			if !d.present[joinPath("cluster", "lease_timeout")] {
				c.LeaseTimeout = wanLeaseTimeout
			}
		}
	}
	for i := range cfg.Services {
		s := &cfg.Services[i]
		sp := indexPath("service", i)
		if !d.present[joinPath(sp, "switch_hold")] {
			s.SwitchHold = defaultSwitchHold
			if cfg.Cluster != nil {
				s.SwitchHold = cfg.Cluster.SwitchHold
			}
		}
		hp := joinPath(sp, "health")
		if !d.present[joinPath(hp, "timeout")] && s.Health.Interval > 0 && s.Health.Timeout >= s.Health.Interval {
			// The default must fit a shorter interval set alone: half of it.
			s.Health.Timeout = s.Health.Interval / 2
		}
		if !d.present[joinPath(hp, "fast_interval")] {
			s.Health.FastInterval = defaultFastInterval(s.Health.Interval)
		}
		if !d.present[joinPath(hp, "down_interval")] {
			s.Health.DownInterval = s.Health.Interval
		}
	}
}

// oneOf reports whether v is among allowed.
func oneOf[T ~string](v T, allowed ...T) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

// enum checks that v is one of allowed, naming them if not.
func enum[T ~string](d *decoder, table, key string, v T, allowed ...T) {
	if oneOf(v, allowed...) {
		return
	}
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = strconv.Quote(string(a))
	}
	d.errorf(table, key, "%s: unknown value %q: want %s", key, string(v), strings.Join(names, ", "))
}

func (d *decoder) positive(table, key string, v time.Duration) {
	if v <= 0 {
		d.errorf(table, key, "%s: must be positive, not %v", key, v)
	}
}

func (d *decoder) nonNegative(table, key string, v time.Duration) {
	if v < 0 {
		d.errorf(table, key, "%s: must not be negative, not %v", key, v)
	}
}

func (d *decoder) nonNegativeInt(table, key string, v int64) {
	if v < 0 {
		d.errorf(table, key, "%s: must not be negative, not %d", key, v)
	}
}

// maxLoops bounds [proxy] loops: each loop is an OS thread.
const maxLoops = 1024

// addrRule says what an address may be.
type addrRule int

const (
	addrNeedHost addrRule = 1 << iota // the host part may not be empty
	addrPortZero                      // port 0 (pick a free port) is allowed
)

// address checks a host:port value and reports what is wrong with it.
func (d *decoder) address(table, key, v string, rule addrRule) bool {
	if msg := checkAddress(v, rule); msg != "" {
		d.errorf(table, key, "%s %q: %s", key, v, msg)
		return false
	}
	return true
}

// checkAddress returns what is wrong with host:port v, or "".
// Its own parsing rather than net.SplitHostPort: the messages say what to fix.
func checkAddress(v string, rule addrRule) string {
	var host, port string
	if strings.HasPrefix(v, "[") {
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return "missing ']' after the IPv6 address"
		}
		host = v[1:end]
		rest := v[end+1:]
		if rest == "" {
			return "missing port"
		}
		if rest[0] != ':' {
			return "want [ipv6]:port"
		}
		port = rest[1:]
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Sprintf("invalid IPv6 address %q", host)
		}
	} else {
		i := strings.LastIndexByte(v, ':')
		if i < 0 {
			return "missing port"
		}
		host, port = v[:i], v[i+1:]
		if strings.Contains(host, ":") {
			return "an IPv6 address needs brackets, as in [::1]:5432"
		}
		if host == "" && rule&addrNeedHost != 0 {
			return "missing host"
		}
		if host != "" && !validHost(host) {
			return fmt.Sprintf("invalid host %q", host)
		}
	}
	if port == "" {
		return "missing port"
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Sprintf("port %q must be a number from 1 to 65535", port)
	}
	if n == 0 && rule&addrPortZero == 0 {
		return "port 0 is not allowed here"
	}
	return ""
}

// validHost accepts an IPv4 address or a DNS name.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// validName accepts [A-Za-z0-9_.-]+.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// missing reports whether a required key is empty, unless the file gave
// it a value of the wrong type (already reported).
func (d *decoder) missing(table, key string, empty bool) bool {
	return empty && !d.bad[joinPath(table, key)]
}

// name checks a required name key.
func (d *decoder) name(table, key, v string) {
	switch {
	case v == "":
		if d.missing(table, key, true) {
			d.errorf(table, key, "%s: required", key)
		}
	case !validName(v):
		d.errorf(table, key, "%s %q: may contain only letters, digits, '_', '.' and '-'", key, v)
	}
}

// validate collects every semantic problem of cfg.
func (d *decoder) validate(cfg *Config) {
	if cfg.Admin.Listen != "" {
		d.address("admin", "listen", cfg.Admin.Listen, addrPortZero)
	}
	enum(d, "log", "level", cfg.Log.Level, "debug", "info", "warn", "error")
	enum(d, "log", "format", cfg.Log.Format, "text", "json")
	d.nonNegative("proxy", "drain_timeout", cfg.Proxy.DrainTimeout)
	enum(d, "proxy", "io_uring", cfg.Proxy.IOURing, "auto", "off")
	if l := cfg.Proxy.Loops; l < 0 || l > maxLoops {
		d.errorf("proxy", "loops", "loops: must be 0 (one per CPU, steered) to %d, not %d", maxLoops, l)
	}
	if cfg.Cluster != nil {
		d.validateCluster(cfg.Cluster)
	}
	if d.missing("", "service", len(cfg.Services) == 0) {
		d.errorf("", "", "no [[service]] defined: at least one is needed")
	}
	names := map[string]int{}
	type listener struct {
		host string
		port uint64
		what string // whose address, for the message
	}
	// The admin API and gossip (TCP) listen too: a service may not take their port.
	var listeners []listener
	if a := cfg.Admin.Listen; a != "" && checkAddress(a, addrPortZero) == "" {
		if host, port := splitValid(a); port != 0 {
			listeners = append(listeners, listener{host, port, fmt.Sprintf("[admin] listen %q", a)})
		}
	}
	if c := cfg.Cluster; c != nil && checkAddress(c.Bind, addrPortZero) == "" {
		if host, port := splitValid(c.Bind); port != 0 {
			listeners = append(listeners, listener{host, port, fmt.Sprintf("[cluster] bind %q", c.Bind)})
		}
	}
	for i := range cfg.Services {
		s := &cfg.Services[i]
		sp := indexPath("service", i)
		if s.Name != "" {
			if j, dup := names[s.Name]; dup {
				line, _ := d.scan.lookup(joinPath(indexPath("service", j), "name"))
				d.errorf(sp, "name", "name %q: already used by the service at line %d", s.Name, line)
			} else {
				names[s.Name] = i
			}
		}
		d.validateService(cfg, s, sp)
		if s.Listen == "" || checkAddress(s.Listen, addrPortZero) != "" {
			continue
		}
		host, port := splitValid(s.Listen)
		if port == 0 {
			continue // a free port each: never a clash
		}
		for _, l := range listeners {
			if l.port == port && (l.host == host || wildcard(l.host) || wildcard(host)) {
				d.errorf(sp, "listen", "listen %q: overlaps %s", s.Listen, l.what)
				break
			}
		}
		listeners = append(listeners, listener{host, port, fmt.Sprintf("the listen address %q of service %s", s.Listen, d.describeService(cfg, i))})
	}
}

// describeService names service i for a message about another one.
func (d *decoder) describeService(cfg *Config, i int) string {
	if n := cfg.Services[i].Name; n != "" {
		return strconv.Quote(n)
	}
	return fmt.Sprintf("#%d", i+1)
}

// splitValid splits an address that checkAddress accepted.
func splitValid(v string) (string, uint64) {
	i := strings.LastIndexByte(v, ':')
	host := strings.TrimSuffix(strings.TrimPrefix(v[:i], "["), "]")
	port, _ := strconv.ParseUint(v[i+1:], 10, 16)
	return host, port
}

func wildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

func (d *decoder) validateCluster(c *Cluster) {
	const cp = "cluster"
	if d.missing(cp, "node_name", c.NodeName == "") {
		d.errorf(cp, "", "node_name: required")
	}
	if c.Bind != "" { // "" only when node_name names no peer, said below
		d.address(cp, "bind", c.Bind, addrPortZero)
	}
	if c.Advertise != "" {
		d.address(cp, "advertise", c.Advertise, addrNeedHost)
	}
	if d.missing(cp, "peer", len(c.Peers) == 0) {
		d.errorf(cp, "", "no [[cluster.peer]] defined: list every proxy of the cluster, this one included")
	}
	if len(c.Peers) == 2 {
		d.warnf(cp, "peer", "2 peers: a quorum of 2 tolerates no failure; use 3 or more, or run without [cluster]")
	}
	names := map[string]bool{}
	addrs := map[string]string{}
	for i, p := range c.Peers {
		pp := indexPath(joinPath(cp, "peer"), i)
		if p.Name == "" {
			if d.missing(pp, "name", true) {
				d.errorf(pp, "", "name: required")
			}
		} else if names[p.Name] {
			d.errorf(pp, "name", "name %q: listed twice", p.Name)
		}
		names[p.Name] = true
		if p.Address == "" {
			if d.missing(pp, "address", true) {
				d.errorf(pp, "", "address: required")
			}
		} else if d.address(pp, "address", p.Address, addrNeedHost) {
			if other, dup := addrs[p.Address]; dup {
				d.errorf(pp, "address", "address %q: already used by peer %q", p.Address, other)
			}
			addrs[p.Address] = p.Name
		}
	}
	if c.NodeName != "" && len(c.Peers) > 0 && !names[c.NodeName] {
		d.errorf(cp, "node_name", "node_name %q: not among the [[cluster.peer]] names; list this proxy too", c.NodeName)
	}
	switch {
	case c.SecretKeyFile == "" && !c.Insecure && !d.bad[joinPath(cp, "secret_key_file")] && !d.bad[joinPath(cp, "insecure")]:
		d.errorf(cp, "", "secret_key_file: required (or set insecure = true to gossip unencrypted)")
	case c.SecretKeyFile != "" && c.Insecure:
		d.errorf(cp, "insecure", "insecure = true and secret_key_file are both set: choose one")
	}
	if d.missing(cp, "state_dir", c.StateDir == "") {
		d.errorf(cp, "", "state_dir: required")
	}
	d.positive(cp, "lease_timeout", c.LeaseTimeout)
	d.positive(cp, "gossip_interval", c.GossipInterval)
	d.positive(cp, "probe_interval", c.ProbeInterval)
	d.positive(cp, "rejoin_interval", c.RejoinInterval)
	if !(c.ClockDrift >= 0 && c.ClockDrift < 0.5) {
		d.errorf(cp, "clock_drift", "clock_drift: must be at least 0 and below 0.5, not %v", c.ClockDrift)
	}
	enum(d, cp, "on_quorum_loss", c.OnQuorumLoss, ActionClose, ActionKeep)
	enum(d, cp, "network", c.Network, NetworkLAN, NetworkWAN)
	d.nonNegative(cp, "switch_hold", c.SwitchHold)
	if c.Label == "" {
		d.errorf(cp, "label", "label: must not be empty")
	} else if len(c.Label) > 255 {
		d.errorf(cp, "label", "label: at most 255 bytes, not %d", len(c.Label))
	}
}

func (d *decoder) validateService(cfg *Config, s *Service, sp string) {
	d.name(sp, "name", s.Name)
	if s.Listen == "" {
		if d.missing(sp, "listen", true) {
			d.errorf(sp, "", "listen: required")
		}
	} else {
		d.address(sp, "listen", s.Listen, addrPortZero)
	}
	enum(d, sp, "mode", s.Mode, ModeActivePassive, ModeActiveActive)
	enum(d, sp, "balance", s.Balance, BalanceRoundRobin, BalanceLeastConn)
	enum(d, sp, "role", s.Role, RoleAny, RolePrimary, RoleReplica)
	enum(d, sp, "on_backend_down", s.OnBackendDown, ActionClose, ActionKeep)
	enum(d, sp, "failback", s.Failback, FailbackManual, FailbackAuto)
	enum(d, sp, "rpo", s.RPO, RPOAny, RPOZero)
	seen := map[string]bool{}
	for _, r := range s.RegionOrder {
		switch {
		case r == "":
			d.errorf(sp, "region_order", "region_order: an empty region name")
		case seen[r]:
			d.errorf(sp, "region_order", "region_order: %q listed twice", r)
		}
		seen[r] = true
	}
	if s.RPO == RPOZero && s.Health.Kind != KindPostgres {
		d.errorf(sp, "rpo", "rpo = \"zero\" needs kind = \"postgres\" checks, which read the primary's synchronous standbys; not %q", s.Health.Kind)
	}
	if s.RPO == RPOZero && len(s.Backends) > 64 {
		d.errorf(sp, "rpo", "rpo = \"zero\" handles at most 64 backends, not %d", len(s.Backends))
	}
	if s.RPO == RPOZero && s.Mode != ModeActivePassive {
		d.errorf(sp, "rpo", "rpo = \"zero\" applies to active-passive services")
	}
	d.nonNegativeInt(sp, "max_connections", int64(s.MaxConnections))
	for _, n := range s.AcceptProxy {
		if _, err := parsePrefix(n); err != nil {
			d.errorf(sp, "accept_proxy", "accept_proxy: %q is not a network (\"10.0.0.0/24\") or an address", n)
		}
	}
	d.positive(sp, "connect_timeout", s.ConnectTimeout)
	d.nonNegative(sp, "idle_timeout", s.IdleTimeout)
	d.nonNegative(sp, "switch_hold", s.SwitchHold)
	d.nonNegative(sp, "max_lag", s.MaxLag)
	d.nonNegativeInt(sp, "max_lag_bytes", s.MaxLagBytes)
	d.nonNegative(sp, "max_lag_on_failover", s.MaxLagOnFailover)
	d.nonNegativeInt(sp, "max_lag_bytes_on_failover", s.MaxLagBytesOnFailover)
	d.nonNegative(sp, "alert_lag", s.AlertLag)
	d.nonNegativeInt(sp, "alert_lag_bytes", s.AlertLagBytes)
	if (s.AlertLag > 0 || s.AlertLagBytes > 0) && !s.Health.RoleAware() && oneOf(s.Health.Kind, KindTCP, KindHTTP) {
		d.warnf(sp, "alert_lag", "alert_lag and alert_lag_bytes need a health kind that reports lag (postgres, redis, mysql, exec, or http with roles = \"patroni\"), not %q", s.Health.Kind)
	}
	if (s.Role == RolePrimary || s.Role == RoleReplica) && !s.Health.RoleAware() && oneOf(s.Health.Kind, KindTCP, KindHTTP) {
		d.errorf(sp, "role", "role %q needs a health kind that reports roles (postgres, redis, mysql, exec, or http with roles = \"patroni\"), not %q", s.Role, s.Health.Kind)
	}
	if s.Role != RoleReplica && (d.present[joinPath(sp, "max_lag")] || d.present[joinPath(sp, "max_lag_bytes")]) {
		d.warnf(sp, "max_lag", "max_lag and max_lag_bytes apply only to role = \"replica\"")
	}
	if s.Mode == ModeActivePassive && d.present[joinPath(sp, "balance")] {
		d.warnf(sp, "balance", "balance has no effect in active-passive mode")
	}
	if s.Mode == ModeActiveActive && (len(s.Hooks.Promote) > 0 || len(s.Hooks.Fence) > 0) {
		d.warnf(joinPath(sp, "hooks"), "", "promote and fence hooks never run in active-active mode")
	}
	if len(s.Hooks.Repoint) > 0 && (s.Mode == ModeActiveActive || s.Role == RoleReplica) {
		d.warnf(joinPath(sp, "hooks"), "repoint", "repoint runs only after a failover of an active-passive service's primary, never with mode = \"active-active\" or role = \"replica\"")
	}
	if cfg.Cluster != nil && s.Mode == ModeActivePassive && s.Role != RoleReplica {
		// The cluster decides these services' targets; say which keys it ignores.
		if s.Failback == FailbackAuto {
			d.warnf(sp, "failback", "failback = \"auto\" has no effect under [cluster]: a clustered service fails back only by `quorumproxy switchover`")
		}
	}
	d.validateHealth(s, joinPath(sp, "health"))
	d.validateHooks(&s.Hooks, joinPath(sp, "hooks"))

	switch {
	case len(s.Backends) == 0 && d.bad[joinPath(sp, "backend")]:
		// already reported
	case len(s.Backends) == 0:
		d.errorf(sp, "", "no [[service.backend]] defined: at least one is needed")
	case len(s.Backends) == 1 && s.Mode == ModeActivePassive:
		d.warnf(sp, "", "active-passive with one backend: there is nothing to fail over to")
	}
	names := map[string]bool{}
	addrs := map[string]string{}
	for i := range s.Backends {
		b := &s.Backends[i]
		bp := indexPath(joinPath(sp, "backend"), i)
		d.name(bp, "name", b.Name)
		if b.Name != "" {
			if names[b.Name] {
				d.errorf(bp, "name", "name %q: already used in this service", b.Name)
			}
			names[b.Name] = true
		}
		if b.Address == "" {
			if d.missing(bp, "address", true) {
				d.errorf(bp, "", "address: required")
			}
		} else if d.address(bp, "address", b.Address, addrNeedHost) {
			if other, dup := addrs[b.Address]; dup {
				d.warnf(bp, "address", "address %q: also the address of backend %q", b.Address, other)
			}
			addrs[b.Address] = b.Name
		}
		if d.present[joinPath(bp, "check_address")] {
			d.address(bp, "check_address", b.CheckAddress, addrNeedHost)
		}
		if b.Weight < 1 {
			d.errorf(bp, "weight", "weight: must be at least 1, not %d (to take a backend out of rotation, remove it and reload)", b.Weight)
		}
		d.nonNegativeInt(bp, "max_connections", int64(b.MaxConnections))
		enum(d, bp, "send_proxy", b.SendProxy, "", "v1", "v2")
	}
}

func (d *decoder) validateHealth(s *Service, hp string) {
	h := &s.Health
	enum(d, hp, "kind", h.Kind, KindTCP, KindPostgres, KindRedis, KindMySQL, KindHTTP, KindExec)
	d.positive(hp, "interval", h.Interval)
	d.positive(hp, "timeout", h.Timeout)
	if h.Interval > 0 && h.Timeout >= h.Interval {
		d.errorf(hp, "timeout", "timeout %v: must be below interval %v, so that checks do not pile up", h.Timeout, h.Interval)
	}
	// When derived from a bad interval they are reported with it.
	if d.present[joinPath(hp, "fast_interval")] {
		d.positive(hp, "fast_interval", h.FastInterval)
	}
	if d.present[joinPath(hp, "down_interval")] {
		d.positive(hp, "down_interval", h.DownInterval)
	}
	if h.FastInterval > h.Interval && h.Interval > 0 {
		d.warnf(hp, "fast_interval", "fast_interval %v is above interval %v: checks would slow down while a backend changes state", h.FastInterval, h.Interval)
	}
	if h.Rise < 1 {
		d.errorf(hp, "rise", "rise: must be at least 1, not %d", h.Rise)
	}
	if h.Fall < 1 {
		d.errorf(hp, "fall", "fall: must be at least 1, not %d", h.Fall)
	}
	if h.Port < 0 || h.Port > 65535 {
		d.errorf(hp, "port", "port: must be from 1 to 65535, not %d (left out, checks go to each backend's own port)", h.Port)
	}
	// Keys that only one family of kinds reads: setting them for another is a mistake.
	for _, k := range []string{"user", "password_file", "password_env"} {
		if d.present[joinPath(hp, k)] && !oneOf(h.Kind, KindPostgres, KindRedis, KindMySQL) {
			d.errorf(hp, k, "%s: only for kind \"postgres\", \"redis\" or \"mysql\", not %q", k, h.Kind)
		}
	}
	if d.present[joinPath(hp, "database")] && !oneOf(h.Kind, KindPostgres, KindMySQL) {
		d.errorf(hp, "database", "database: only for kind \"postgres\" or \"mysql\", not %q", h.Kind)
	}
	httpKeys := []string{"method", "path", "expect_status", "expect_body", "roles"}
	d.validateTLS(h, hp)
	for _, k := range httpKeys {
		if d.present[joinPath(hp, k)] && h.Kind != KindHTTP {
			d.errorf(hp, k, "%s: only for kind \"http\", not %q", k, h.Kind)
		}
	}
	if d.present[joinPath(hp, "command")] && h.Kind != KindExec {
		d.errorf(hp, "command", "command: only for kind \"exec\", not %q", h.Kind)
	}
	if h.PasswordFile != "" && h.PasswordEnv != "" {
		d.errorf(hp, "password_env", "password_file and password_env are both set: choose one")
	}
	if h.Kind == KindHTTP {
		if !validMethod(h.Method) {
			d.errorf(hp, "method", "method %q: want an HTTP method such as \"GET\" or \"HEAD\"", h.Method)
		}
		if !strings.HasPrefix(h.Path, "/") {
			d.errorf(hp, "path", "path %q: must start with '/'", h.Path)
		}
		if h.ExpectStatus < 100 || h.ExpectStatus > 599 {
			d.errorf(hp, "expect_status", "expect_status: must be an HTTP status from 100 to 599, not %d", h.ExpectStatus)
		}
		enum(d, hp, "roles", h.Roles, RolesNone, RolesPatroni)
		if h.Roles == RolesPatroni {
			d.validatePatroni(s, hp)
		}
	}
	if h.Kind == KindExec {
		if d.missing(hp, "command", len(h.Command) == 0) {
			d.errorf(hp, "command", "command: required for kind \"exec\" (an argv array)")
		} else if len(h.Command) > 0 && h.Command[0] == "" {
			d.errorf(hp, "command", "command: the program name (first element) is empty")
		}
	}
}

// patroniPaths are the paths an http check with roles = "patroni" may ask:
// those whose status code is 200 only on the holder of Patroni's leader lock
// ("/" is "/primary" there), and /patroni, whose document alone tells.
var patroniPaths = []string{"/", "/primary", "/read-write", "/leader", "/patroni"}

// validatePatroni checks the keys of an http check with roles = "patroni".
func (d *decoder) validatePatroni(s *Service, hp string) {
	h := &s.Health
	if d.present[joinPath(hp, "method")] && h.Method != "GET" {
		d.errorf(hp, "method", "method %q: roles = \"patroni\" reads the JSON body of a GET", h.Method)
	}
	for _, k := range []string{"expect_status", "expect_body"} {
		if d.present[joinPath(hp, k)] {
			d.errorf(hp, k, "%s: not used with roles = \"patroni\" (Patroni answers 200 or 503 with the node's status either way)", k)
		}
	}
	if path, _, _ := strings.Cut(h.Path, "?"); strings.HasPrefix(h.Path, "/") && !oneOf(path, patroniPaths...) {
		d.errorf(hp, "path", "path %q: roles = \"patroni\" needs \"/primary\" (or \"/\", the same: 200 only on the leader), \"/read-write\", \"/leader\" or \"/patroni\"", h.Path)
	}
	if h.Port == 0 {
		for _, b := range s.Backends {
			if b.CheckAddress == "" {
				d.warnf(hp, "roles", "roles = \"patroni\" without port: checks go to each backend's own port, where PostgreSQL listens; set port to Patroni's REST API port (8008 by default)")
				break
			}
		}
	}
}

// tlsKeys are the [service.health] keys about TLS; all but tls need tls = true.
var tlsKeys = []string{"tls", "tls_ca_file", "tls_server_name", "tls_cert_file", "tls_key_file", "tls_skip_verify"}

func (d *decoder) validateTLS(h *Health, hp string) {
	for _, k := range tlsKeys {
		if !d.present[joinPath(hp, k)] {
			continue
		}
		switch {
		case !oneOf(h.Kind, KindPostgres, KindRedis, KindMySQL, KindHTTP):
			d.errorf(hp, k, "%s: only for kind \"postgres\", \"redis\", \"mysql\" or \"http\", not %q", k, h.Kind)
		case k != "tls" && !h.TLS:
			d.errorf(hp, k, "%s: has no effect without tls = true", k)
		}
	}
	if (h.TLSCertFile == "") != (h.TLSKeyFile == "") {
		d.errorf(hp, "tls_cert_file", "tls_cert_file and tls_key_file: give both or neither")
	}
	if h.TLSServerName != "" && !validHost(h.TLSServerName) {
		d.errorf(hp, "tls_server_name", "tls_server_name %q: not a host name or IP address", h.TLSServerName)
	}
	if h.TLS && h.TLSSkipVerify {
		if h.TLSCAFile != "" || h.TLSServerName != "" {
			d.errorf(hp, "tls_skip_verify", "tls_skip_verify = true with tls_ca_file or tls_server_name: verification is either on or off; choose one")
		} else {
			d.warnf(hp, "tls_skip_verify", "tls_skip_verify = true: the backend's certificate is not checked, so anyone on the network path can pose as it and receive the check's credentials; give tls_ca_file instead")
		}
	}
}

// validMethod accepts an HTTP token in upper case.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		if m[i] < 'A' || m[i] > 'Z' {
			return false
		}
	}
	return true
}

func (d *decoder) validateHooks(h *Hooks, hp string) {
	for _, hk := range []struct {
		key  string
		argv []string
	}{{"promote", h.Promote}, {"fence", h.Fence}, {"notify", h.Notify}, {"repoint", h.Repoint}} {
		if len(hk.argv) > 0 && hk.argv[0] == "" {
			d.errorf(hp, hk.key, "%s: the program name (first element) is empty", hk.key)
		}
	}
	d.positive(hp, "timeout", h.Timeout)
}
