package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// parseFile parses a testdata file under its base name, as check-config
// would print it for a file in the working directory.
func parseFile(t *testing.T, path string) (*Config, []Problem, error) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return Parse(filepath.Base(path), data)
}

func TestBadConfigs(t *testing.T) {
	tests := map[string][]string{
		"addresses.toml": {
			`addresses.toml:2:1: admin: listen "localhost": missing port`,
			`addresses.toml:6:1: service "pg": listen ":http": port "http" must be a number from 1 to 65535`,
			`addresses.toml:10:3: service "pg" backend "b1": address ":5432": missing host`,
			`addresses.toml:14:3: service "pg" backend "b2": address "10.0.0.1": missing port`,
			`addresses.toml:18:3: service "pg" backend "b3": address "::1:5432": an IPv6 address needs brackets, as in [::1]:5432`,
			`addresses.toml:22:3: service "pg" backend "b4": address "10.0.0.1:70000": port "70000" must be a number from 1 to 65535`,
			`addresses.toml:26:3: service "pg" backend "b5": address "bad host!:5432": invalid host "bad host!"`,
			`addresses.toml:30:3: service "pg" backend "b6": address "[::1]": missing port`,
			`addresses.toml:34:3: service "pg" backend "b7": address "10.0.0.1:0": port 0 is not allowed here`,
		},
		"backends.toml": {
			`backends.toml:1:1: service "none": no [[service.backend]] defined: at least one is needed`,
			`backends.toml:6:1: service "bad names": name "bad names": may contain only letters, digits, '_', '.' and '-'`,
			`backends.toml:9:3: service "bad names" backend #1: name: required`,
			`backends.toml:9:3: service "bad names" backend #1: address: required`,
			`backends.toml:13:3: service "bad names" backend "b/1": name "b/1": may contain only letters, digits, '_', '.' and '-'`,
			`backends.toml:15:3: service "bad names" backend "b/1": weight: must be at least 1, not 0 (to take a backend out of rotation, remove it and reload)`,
		},
		"check_address.toml": {
			`check_address.toml:4:1: service "pg": role "primary" needs a health kind that reports roles (postgres, redis, mysql, exec, or http with roles = "patroni"), not "http"`,
			`check_address.toml:8:3: service "pg" health: port: must be from 1 to 65535, not 70000 (left out, checks go to each backend's own port)`,
			`check_address.toml:9:3: service "pg" health: roles: unknown value "consul": want "", "patroni"`,
			`check_address.toml:14:3: service "pg" backend "a": check_address "10.0.0.5": missing port`,
			`check_address.toml:19:3: service "pg" backend "b": check_address "10.0.0.6:0": port 0 is not allowed here`,
			`check_address.toml:24:59: service "patroni" health: method "HEAD": roles = "patroni" reads the JSON body of a GET`,
			`check_address.toml:24:76: service "patroni" health: path "/replica": roles = "patroni" needs "/primary" (or "/", the same: 200 only on the leader), "/read-write", "/leader" or "/patroni"`,
			`check_address.toml:24:95: service "patroni" health: expect_status: not used with roles = "patroni" (Patroni answers 200 or 503 with the node's status either way)`,
			`check_address.toml:24:116: service "patroni" health: expect_body: not used with roles = "patroni" (Patroni answers 200 or 503 with the node's status either way)`,
			`check_address.toml:25:53: service "patroni" backend "a": check_address ":8008": missing host`,
			`check_address.toml:30:26: service "tcp" health: port: must be from 1 to 65535, not -1 (left out, checks go to each backend's own port)`,
			`check_address.toml:30:37: service "tcp" health: roles: only for kind "http", not "tcp"`,
			`check_address.toml:31:53: service "tcp" backend "a": check_address "[::1]": missing port`,
		},
		"cluster_node.toml": {
			`cluster_node.toml:2:1: cluster: node_name "qp9": not among the [[cluster.peer]] names; list this proxy too`,
		},
		"cluster_peers.toml": {
			`cluster_peers.toml:4:1: cluster: insecure = true and secret_key_file are both set: choose one`,
			`cluster_peers.toml:6:1: cluster: clock_drift: must be at least 0 and below 0.5, not 0.5`,
			`cluster_peers.toml:7:1: cluster: on_quorum_loss: unknown value "ignore": want "close", "keep"`,
			`cluster_peers.toml:8:1: cluster: label: must not be empty`,
			`cluster_peers.toml:15:1: cluster peer "qp1": name "qp1": listed twice`,
			`cluster_peers.toml:20:1: cluster peer "qp3": address "127.0.0.1:7946": already used by peer "qp1"`,
			`cluster_peers.toml:22:1: cluster peer #4: name: required`,
			`cluster_peers.toml:23:1: cluster peer #4: address ":7946": missing host`,
		},
		"cluster_required.toml": {
			`cluster_required.toml:1:1: cluster: node_name: required`,
			`cluster_required.toml:1:1: cluster: no [[cluster.peer]] defined: list every proxy of the cluster, this one included`,
			`cluster_required.toml:1:1: cluster: secret_key_file: required (or set insecure = true to gossip unencrypted)`,
			`cluster_required.toml:1:1: cluster: state_dir: required`,
			`cluster_required.toml:2:1: cluster: bind "0.0.0.0": missing port`,
			`cluster_required.toml:3:1: cluster: lease_timeout: must be positive, not 0s`,
			`cluster_required.toml:4:1: cluster: gossip_interval: must be positive, not 0s`,
			`cluster_required.toml:5:1: cluster: probe_interval: must be positive, not -1s`,
			`cluster_required.toml:6:1: cluster: rejoin_interval: must be positive, not 0s`,
		},
		"data_plane.toml": {
			`data_plane.toml:2:1: proxy: loops: must be 0 (one per CPU, steered) to 1024, not -1`,
			`data_plane.toml:7:1: service "pg": accept_proxy: "10.0.0.0/33" is not a network ("10.0.0.0/24") or an address`,
			`data_plane.toml:7:1: service "pg": accept_proxy: "lb.example" is not a network ("10.0.0.0/24") or an address`,
			`data_plane.toml:12:3: service "pg" backend "a": send_proxy: unknown value "v3": want "", "v1", "v2"`,
		},
		"duplicates.toml": {
			`duplicates.toml:7:1: service "pg": name "pg": already used by the service at line 2`,
			`duplicates.toml:8:1: service "pg": listen "0.0.0.0:6432": overlaps the listen address "127.0.0.1:6432" of service "pg"`,
			`duplicates.toml:9:58: service "pg" backend "a": name "a": already used in this service`,
			`duplicates.toml:13:1: service "redis": listen "127.0.0.1:6432": overlaps the listen address "127.0.0.1:6432" of service "pg"`,
		},
		"durations.toml": {
			`durations.toml:2:1: proxy: drain_timeout: must not be negative, not -1s`,
			`durations.toml:7:1: service "pg": connect_timeout: must be positive, not 0s`,
			`durations.toml:8:1: service "pg": idle_timeout: must not be negative, not -5m0s`,
			`durations.toml:9:1: service "pg": switch_hold: must not be negative, not -1ms`,
			`durations.toml:10:1: service "pg": max_lag: must not be negative, not -1s`,
			`durations.toml:11:1: service "pg": max_lag_on_failover: must not be negative, not -2s`,
			`durations.toml:12:1: service "pg": max_lag_bytes_on_failover: must not be negative, not -1`,
			`durations.toml:13:1: service "pg": max_connections: must not be negative, not -3`,
			`durations.toml:16:3: service "pg" health: interval: invalid duration "2 seconds": use a number with a unit, such as "250ms" or "2s"`,
			`durations.toml:17:3: service "pg" health: timeout: duration 500 has no unit: write a string such as "500s" or "500ms"`,
			`durations.toml:22:3: service "pg" backend "a": max_connections: must not be negative, not -1`,
		},
		"enums.toml": {
			`enums.toml:2:1: log: level: unknown value "verbose": want "debug", "info", "warn", "error"`,
			`enums.toml:3:1: log: format: unknown value "xml": want "text", "json"`,
			`enums.toml:8:1: service "pg": mode: unknown value "active-standby": want "active-passive", "active-active"`,
			`enums.toml:9:1: service "pg": balance: unknown value "random": want "round-robin", "least-conn"`,
			`enums.toml:10:1: service "pg": role: unknown value "leader": want "any", "primary", "replica"`,
			`enums.toml:11:1: service "pg": on_backend_down: unknown value "drop": want "close", "keep"`,
			`enums.toml:12:1: service "pg": failback: unknown value "never": want "manual", "auto"`,
			`enums.toml:13:1: service "pg" health: kind: unknown value "ping": want "tcp", "postgres", "redis", "mysql", "http", "exec"`,
		},
		"health.toml": {
			`health.toml:7:3: service "pg" health: timeout 1s: must be below interval 1s, so that checks do not pile up`,
			`health.toml:8:3: service "pg" health: rise: must be at least 1, not 0`,
			`health.toml:9:3: service "pg" health: fall: must be at least 1, not -1`,
			`health.toml:10:3: service "pg" health: fast_interval: must be positive, not 0s`,
			`health.toml:11:3: service "pg" health: down_interval: must be positive, not -1s`,
		},
		"overflow.toml": {
			`overflow.toml:3:1: admin: listen "bad": missing port`,
			`overflow.toml:8:1: service "pg": max_connections: 99999999999999999999 is out of range: an integer must fit in 64 bits`,
			`overflow.toml:12:3: service "pg" backend "a": address "nope": missing port`,
			`overflow.toml:13:3: service "pg" backend "a": weight: 0x1_0000_0000_0000_0000 is out of range: an integer must fit in 64 bits`,
			`overflow.toml:18:3: service "pg" backend "b": weight: must be at least 1, not 0 (to take a backend out of rotation, remove it and reload)`,
		},
		"rpo.toml": {
			`rpo.toml:4:1: service "cache": rpo = "zero" needs kind = "postgres" checks, which read the primary's synchronous standbys; not "redis"`,
			`rpo.toml:16:1: service "pg": rpo: unknown value "none": want "any", "zero"`,
			`rpo.toml:17:1: service "pg": alert_lag: must not be negative, not -1s`,
		},
		"tls.toml": {
			`tls.toml:7:3: service "pg" health: tls_ca_file: has no effect without tls = true`,
			`tls.toml:8:3: service "pg" health: tls_cert_file: has no effect without tls = true`,
			`tls.toml:8:3: service "pg" health: tls_cert_file and tls_key_file: give both or neither`,
			`tls.toml:25:3: service "redis" health: tls_skip_verify = true with tls_ca_file or tls_server_name: verification is either on or off; choose one`,
			`tls.toml:26:3: service "redis" health: tls_server_name "bad name!": not a host name or IP address`,
			`tls.toml:37:3: service "tcp" health: tls: only for kind "postgres", "redis", "mysql" or "http", not "tcp"`,
		},
		"hook_string.toml": {
			`hook_string.toml:6:3: service "pg" hooks: promote: must be an array of strings (argv), not the string "pg_ctl promote -D /data": commands never run through a shell; write ["/path/to/cmd", "arg", ...]`,
			`hook_string.toml:7:3: service "pg" hooks: fence[1]: must be a string, not the integer 7`,
			`hook_string.toml:8:3: service "pg" hooks: notify: the program name (first element) is empty`,
			`hook_string.toml:9:3: service "pg" hooks: timeout: must be positive, not 0s`,
		},
		"kinds.toml": {
			`kinds.toml:4:26: service "tcp" health: user: only for kind "postgres", "redis" or "mysql", not "tcp"`,
			`kinds.toml:4:38: service "tcp" health: tls: only for kind "postgres", "redis", "mysql" or "http", not "tcp"`,
			`kinds.toml:4:50: service "tcp" health: path: only for kind "http", not "tcp"`,
			`kinds.toml:4:62: service "tcp" health: command: only for kind "exec", not "tcp"`,
			`kinds.toml:10:28: service "redis" health: database: only for kind "postgres" or "mysql", not "redis"`,
			`kinds.toml:10:66: service "redis" health: password_file and password_env are both set: choose one`,
			`kinds.toml:16:27: service "http" health: method "get": want an HTTP method such as "GET" or "HEAD"`,
			`kinds.toml:16:43: service "http" health: path "health": must start with '/'`,
			`kinds.toml:16:60: service "http" health: expect_status: must be an HTTP status from 100 to 599, not 20`,
			`kinds.toml:22:1: service "exec" health: command: required for kind "exec" (an argv array)`,
		},
		"no_services.toml": {
			`no_services.toml: no [[service]] defined: at least one is needed`,
		},
		"password.toml": {
			`password.toml:4:45: service "pg" health: unknown key "password": a password is never written in the config; use password_file or password_env`,
		},
		"ports.toml": {
			`ports.toml:14:1: service "one": listen ":7654": overlaps [admin] listen "127.0.0.1:7654"`,
			`ports.toml:19:1: service "two": listen "10.1.2.3:7946": overlaps [cluster] bind "0.0.0.0:7946"`,
		},
		"role_tcp.toml": {
			`role_tcp.toml:4:1: service "pg": role "primary" needs a health kind that reports roles (postgres, redis, mysql, exec, or http with roles = "patroni"), not "tcp"`,
			`role_tcp.toml:18:1: service "web": role "replica" needs a health kind that reports roles (postgres, redis, mysql, exec, or http with roles = "patroni"), not "http"`,
		},
		"syntax.toml": {
			`syntax.toml:4:55: expected a comma (',') or array terminator (']'), but got end of file`,
		},
		"syntax_value.toml": {
			`syntax_value.toml:2:10: Invalid float value: "127.0.0.1"`,
		},
		"types.toml": {
			`types.toml:2:1: log: level: must be a string, not the integer 3`,
			`types.toml:6:1: cluster: insecure: must be true or false, not the string "yes"`,
			`types.toml:8:1: cluster: clock_drift: must be a number, not the string "1%"`,
			`types.toml:9:1: cluster: peer: must be an array of tables ([[cluster.peer]]), not a table`,
			`types.toml:13:1: service "pg": listen: must be a string, not the integer 6432`,
			`types.toml:14:1: service "pg": health: must be a table, not the string "tcp"`,
			`types.toml:19:3: service "pg" backend "a": priority: must be an integer, not the float 1.5`,
			`types.toml:20:3: service "pg" backend "a": weight: must be an integer, not the string "2"`,
			`types.toml:29:1: service "redis": backend: must be an array of tables ([[service.backend]]), not the string "127.0.0.1:6379"`,
		},
		"unknown_keys.toml": {
			`unknown_keys.toml:2:1: unknown key "loggin"`,
			`unknown_keys.toml:6:1: proxy: unknown key "drain_timout" (did you mean "drain_timeout"?)`,
			`unknown_keys.toml:12:3: service "pg" health: unknown key "intervall" (did you mean "interval"?)`,
			`unknown_keys.toml:13:3: service "pg": unknown key "helth" (did you mean "health"?)`,
			`unknown_keys.toml:18:3: service "pg" backend "a": unknown key "prio"`,
			`unknown_keys.toml:22:3: service "pg" backend "b": unknown key "weird key"`,
		},
	}

	files, err := filepath.Glob("../testdata/bad/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	// Every bad file is in the table and every table entry has a file.
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for name := range tests {
		if !slices.Contains(names, name) {
			t.Errorf("table lists %s, which is not in testdata/bad", name)
		}
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			want, ok := tests[name]
			if !ok {
				t.Fatalf("testdata/bad/%s has no expected messages in the table", name)
			}
			cfg, _, err := parseFile(t, f)
			if cfg != nil {
				t.Errorf("config returned along with errors")
			}
			var probs Problems
			if !errors.As(err, &probs) {
				t.Fatalf("error %v (%T) is not a Problems", err, err)
			}
			var got []string
			for _, p := range probs {
				if p.Warning {
					t.Errorf("warning among the errors: %v", p)
				}
				got = append(got, p.Error())
			}
			if !slices.Equal(got, want) {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if err.Error() != strings.Join(want, "\n") {
				t.Errorf("Error() is not one problem per line:\n%s", err)
			}
		})
	}
}

func TestMinimalDefaults(t *testing.T) {
	cfg, warns, err := parseFile(t, "../testdata/good/minimal.toml")
	if err != nil || len(warns) > 0 {
		t.Fatalf("err %v, warnings %v", err, warns)
	}
	want := &Config{
		Admin: Admin{Listen: "127.0.0.1:7654"},
		Log:   Log{Level: "info", Format: "text"},
		Proxy: Proxy{DrainTimeout: 10 * time.Second, IOURing: "auto"},
		Services: []Service{{
			Name:           "redis",
			Listen:         "127.0.0.1:6380",
			Mode:           ModeActivePassive,
			Balance:        BalanceRoundRobin,
			Role:           RoleAny,
			ConnectTimeout: 3 * time.Second,
			OnBackendDown:  ActionClose,
			Failback:       FailbackManual,
			RPO:            RPOAny,
			SwitchHold:     2 * time.Second,
			Health: Health{
				Kind:         KindTCP,
				Interval:     time.Second,
				Timeout:      900 * time.Millisecond,
				Rise:         2,
				Fall:         5,
				FastInterval: 50 * time.Millisecond,
				DownInterval: time.Second,
				Method:       "GET",
				Path:         "/",
				ExpectStatus: 200,
			},
			Hooks: Hooks{Timeout: 30 * time.Second},
			Backends: []Backend{
				{Name: "a", Address: "127.0.0.1:6379", Weight: 1},
				{Name: "b", Address: "localhost:6390", Weight: 1},
			},
		}},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got\n%+v\nwant\n%+v", cfg, want)
	}
}

func TestClusterConfig(t *testing.T) {
	cfg, warns, err := parseFile(t, "../testdata/good/cluster.toml")
	if err != nil || len(warns) > 0 {
		t.Fatalf("err %v, warnings %v", err, warns)
	}
	c := cfg.Cluster
	if c == nil {
		t.Fatal("no cluster")
	}
	wantCluster := Cluster{
		NodeName: "qp2",
		// bind and advertise left out: this proxy's own peer address.
		Bind:          "127.0.0.2:17946",
		Advertise:     "127.0.0.2:17946",
		SecretKeyFile: "gossip.key",
		StateDir:      "state",
		LeaseTimeout:  1500 * time.Millisecond,
		ClockDrift:    0.01,
		OnQuorumLoss:  ActionClose,
		SwitchHold:    750 * time.Millisecond,
		Label:         "quorumproxy",
		// Tuning keys left out: memberlist's LAN values.
		GossipInterval: 200 * time.Millisecond,
		ProbeInterval:  time.Second,
		RejoinInterval: 10 * time.Second,
		Network:        NetworkLAN,
		Peers: []Peer{
			{Name: "qp1", Address: "127.0.0.1:17946"},
			{Name: "qp2", Address: "127.0.0.2:17946"},
			{Name: "qp3", Address: "[::1]:17946"},
		},
	}
	if !reflect.DeepEqual(*c, wantCluster) {
		t.Errorf("cluster:\ngot  %+v\nwant %+v", *c, wantCluster)
	}
	if q := c.Quorum(); q != 2 {
		t.Errorf("quorum of 3 = %d, want 2", q)
	}
	if len(cfg.Services) != 2 {
		t.Fatalf("%d services, want 2", len(cfg.Services))
	}
	pg, own := cfg.Services[0], cfg.Services[1]
	// switch_hold comes from [cluster] unless the service sets it, even to 0.
	if pg.SwitchHold != 750*time.Millisecond || own.SwitchHold != 0 {
		t.Errorf("switch_hold: pg %v (want 750ms from [cluster]), pg.own-hold %v (want its own 0s)", pg.SwitchHold, own.SwitchHold)
	}
	// Dotted keys, and fast_interval derived from interval with its floor.
	if pg.Health.Kind != KindPostgres || pg.Health.Interval != 100*time.Millisecond ||
		pg.Health.Timeout != 80*time.Millisecond || pg.Health.FastInterval != 50*time.Millisecond ||
		pg.Health.DownInterval != 100*time.Millisecond {
		t.Errorf("pg health: %+v", pg.Health)
	}
	// Inline tables, and an explicit down_interval.
	wantHealth := Health{Kind: KindExec, Interval: 10 * time.Second, Timeout: 900 * time.Millisecond, Rise: 2, Fall: 5,
		FastInterval: 500 * time.Millisecond, DownInterval: 30 * time.Second,
		Method: "GET", Path: "/", ExpectStatus: 200, Command: []string{"/bin/true"}}
	if !reflect.DeepEqual(own.Health, wantHealth) {
		t.Errorf("pg.own-hold health:\ngot  %+v\nwant %+v", own.Health, wantHealth)
	}
	wantBackends := []Backend{{Name: "x", Address: "127.0.0.1:5432", Weight: 1}, {Name: "y", Address: "127.0.0.1:5433", Weight: 3}}
	if !reflect.DeepEqual(own.Backends, wantBackends) {
		t.Errorf("inline backends: got %+v, want %+v", own.Backends, wantBackends)
	}
	if pg.Backends[0].Priority != 10 {
		t.Errorf("priority %d, want 10", pg.Backends[0].Priority)
	}
}

func TestWarnings(t *testing.T) {
	cfg, warns, err := parseFile(t, "../testdata/good/warnings.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		t.Fatal("no config although there are only warnings")
	}
	want := []string{
		`warnings.toml:7:1: warning: cluster: 2 peers: a quorum of 2 tolerates no failure; use 3 or more, or run without [cluster]`,
		`warnings.toml:15:1: warning: service "single": active-passive with one backend: there is nothing to fail over to`,
		`warnings.toml:18:1: warning: service "single": balance has no effect in active-passive mode`,
		`warnings.toml:19:1: warning: service "single": max_lag and max_lag_bytes apply only to role = "replica"`,
		`warnings.toml:30:3: warning: service "aa" hooks: promote and fence hooks never run in active-active mode`,
		`warnings.toml:39:3: warning: service "aa" backend "b2": address "127.0.0.1:7003": also the address of backend "b1"`,
		`warnings.toml:48:3: warning: service "redis" health: tls_skip_verify = true: the backend's certificate is not checked, so anyone on the network path can pose as it and receive the check's credentials; give tls_ca_file instead`,
	}
	var got []string
	for _, w := range warns {
		if !w.Warning {
			t.Errorf("not marked as a warning: %v", w)
		}
		got = append(got, w.Error())
	}
	if !slices.Equal(got, want) {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestGoodConfigsAreClean(t *testing.T) {
	files, _ := filepath.Glob("../testdata/good/*.toml")
	files = append(files, "../testdata/example.toml")
	for _, f := range files {
		cfg, warns, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if cfg == nil {
			t.Errorf("%s: nil config", f)
		}
		if len(warns) > 0 && filepath.Base(f) != "warnings.toml" {
			t.Errorf("%s: warnings: %v", f, warns)
		}
	}
}

// TestExampleDocumentsEveryKey requires every key of the schema to appear in
// testdata/example.toml, set or in a comment, with a comment above it.
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var missing []string
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			key := f.Tag.Get("toml")
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Duration]() {
				walk(prefix+key+".", ft)
				continue
			}
			re := regexp.MustCompile(`^\s*(#\s*)?` + regexp.QuoteMeta(key) + `\s*=`)
			found := false
			for _, l := range lines {
				if re.MatchString(l) {
					found = true
					break
				}
			}
			if !found {
				missing = append(missing, prefix+key)
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	if len(missing) > 0 {
		t.Errorf("testdata/example.toml does not document: %s", strings.Join(missing, ", "))
	}
}

func TestExampleValues(t *testing.T) {
	cfg, _, err := Load("../testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster == nil || len(cfg.Cluster.Peers) != 3 || cfg.Cluster.Quorum() != 2 {
		t.Fatalf("cluster: %+v", cfg.Cluster)
	}
	pg := cfg.Services[0]
	if !slices.Equal(pg.Hooks.Notify, []string{"/usr/local/bin/page-oncall", "--service", "pg"}) {
		t.Errorf("notify hook %q", pg.Hooks.Notify)
	}
	if pg.MaxLagBytesOnFailover != 16<<20 || pg.MaxLagOnFailover != 0 {
		t.Errorf("failover lag bounds %v / %d", pg.MaxLagOnFailover, pg.MaxLagBytesOnFailover)
	}
	// The timings it shows are the defaults.
	h := pg.Health
	if h.Interval != defaultInterval || h.Timeout != defaultTimeout || h.Rise != defaultRise || h.Fall != defaultFall ||
		h.FastInterval != defaultFastInterval(defaultInterval) || h.DownInterval != defaultInterval {
		t.Errorf("example health timings %+v are not the defaults", h)
	}
	if c := cfg.Cluster; c.LeaseTimeout != defaultLeaseTimeout || c.SwitchHold != defaultSwitchHold || pg.SwitchHold != defaultSwitchHold {
		t.Errorf("example lease_timeout %v, switch_hold %v / %v: not the defaults", c.LeaseTimeout, c.SwitchHold, pg.SwitchHold)
	}
}

func TestProblemError(t *testing.T) {
	for _, tc := range []struct {
		p    Problem
		want string
	}{
		{Problem{File: "a.toml", Line: 3, Col: 5, Path: `service "x"`, Msg: "m"}, `a.toml:3:5: service "x": m`},
		{Problem{File: "a.toml", Path: "cluster", Msg: "m"}, `a.toml: cluster: m`},
		{Problem{File: "a.toml", Line: 3, Msg: "m"}, `a.toml:3: m`},
		{Problem{File: "a.toml", Line: 1, Col: 1, Msg: "m", Warning: true}, `a.toml:1:1: warning: m`},
	} {
		if got := tc.p.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, _, err := Load(filepath.Join(t.TempDir(), "absent.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err %v, want fs.ErrNotExist", err)
	}
	var probs Problems
	if errors.As(err, &probs) {
		t.Errorf("an I/O error reported as config problems: %v", err)
	}
}

func TestBackendsHash(t *testing.T) {
	s := Service{Name: "pg", Backends: []Backend{{Name: "a", Address: "h:1"}, {Name: "b", Address: "h:2"}}}
	h := s.BackendsHash()
	if len(h) != 64 {
		t.Fatalf("hash %q is not hex SHA-256", h)
	}
	reordered := Service{Name: "pg", Backends: []Backend{{Name: "b", Address: "h:2", Weight: 5}, {Name: "a", Address: "h:1"}}}
	if reordered.BackendsHash() != h {
		t.Error("hash depends on backend order or on weight")
	}
	for _, other := range []Service{
		{Name: "pg2", Backends: s.Backends},
		{Name: "pg", Backends: []Backend{{Name: "a", Address: "h:1"}, {Name: "b", Address: "h:3"}}},
		{Name: "pg", Backends: []Backend{{Name: "a", Address: "h:1"}}},
		// Field boundaries are unambiguous.
		{Name: "pg", Backends: []Backend{{Name: "ah", Address: ":1"}, {Name: "b", Address: "h:2"}}},
	} {
		if other.BackendsHash() == h {
			t.Errorf("%+v hashes like %+v", other, s)
		}
	}
	if s.Backends[0].Name != "a" {
		t.Error("BackendsHash reordered the service's backends")
	}
}

func TestPeersHash(t *testing.T) {
	c := Cluster{Peers: []Peer{{Name: "b", Address: "h:2"}, {Name: "a", Address: "h:1"}}}
	h := c.PeersHash()
	if (&Cluster{Peers: []Peer{{Name: "a", Address: "h:1"}, {Name: "b", Address: "h:2"}}, NodeName: "other"}).PeersHash() != h {
		t.Error("hash depends on peer order or node name")
	}
	if (&Cluster{Peers: []Peer{{Name: "a", Address: "h:1"}, {Name: "b", Address: "h:3"}}}).PeersHash() == h {
		t.Error("hash ignores addresses")
	}
	if (&Cluster{Peers: []Peer{{Name: "a", Address: "h:1"}}}).PeersHash() == h {
		t.Error("hash ignores a missing peer")
	}
}

func TestCheckAddress(t *testing.T) {
	for _, tc := range []struct {
		addr string
		rule addrRule
		want string
	}{
		{"127.0.0.1:80", addrNeedHost, ""},
		{"db.example.com:5432", addrNeedHost, ""},
		{"[::1]:5432", addrNeedHost, ""},
		{"[fe80::1%eth0]:5432", addrNeedHost, ""},
		{":80", 0, ""},
		{"127.0.0.1:0", addrPortZero, ""},
		{":80", addrNeedHost, "missing host"},
		{"127.0.0.1:0", 0, "port 0 is not allowed here"},
		{"127.0.0.1", 0, "missing port"},
		{"127.0.0.1:", 0, "missing port"},
		{"[::1", 0, "missing ']' after the IPv6 address"},
		{"[::1]5432", 0, "want [ipv6]:port"},
		{"[1.2.3]:5", 0, `invalid IPv6 address "1.2.3"`},
		{"::1:5432", 0, "an IPv6 address needs brackets, as in [::1]:5432"},
		{"h:-1", 0, `port "-1" must be a number from 1 to 65535`},
		{"-h:1", 0, `invalid host "-h"`},
		{"a..b:1", 0, `invalid host "a..b"`},
	} {
		if got := checkAddress(tc.addr, tc.rule); got != tc.want {
			t.Errorf("checkAddress(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// TestPositionsAfterTrickyText puts text that looks like headers and keys
// inside strings and comments, CRLF line ends, quoted and dotted keys, and
// checks that positions still point at the right key.
func TestPositionsAfterTrickyText(t *testing.T) {
	src := "# [[service]] in a comment\r\n" +
		"[admin]\r\n" +
		"token_file = \"\"\"\n[[service]]\nname = \"fake\"\n\"\"\"\"\"\n" + // ends with two extra quotes
		"\"listen\" = '''\n[x]\n'''\n" +
		"[log]\n" +
		"level = \"debug\" # level = \"x\"\n" +
		"\n" +
		"[[service]]\n" +
		"name = \"s\"  # name = 1\n" +
		"listen = \"127.0.0.1:1\"\n" +
		"hooks.notify = [\n  \"a\", # ]\n  \"b]\",\n]\n" +
		"  [[ service . backend ]]\n" +
		"  name = \"a\"\n" +
		"  address = \"h:1\"\n" +
		"  [[service.\"backend\"]]\n" +
		"  name = \"b\"\n" +
		"  address = \"h\"\n" +
		"  [service . health]\n" +
		"  rise = 0\n"
	_, _, err := Parse("t.toml", []byte(src))
	var probs Problems
	if !errors.As(err, &probs) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		`t.toml:7:1: admin: listen "[x]\n": want [ipv6]:port`, // the newline right after the opening quotes is dropped
		`t.toml:25:3: service "s" backend "b": address "h": missing port`,
		`t.toml:27:3: service "s" health: rise: must be at least 1, not 0`,
	}
	var got []string
	for _, p := range probs {
		got = append(got, p.Error())
	}
	if !slices.Equal(got, want) {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParentPath(t *testing.T) {
	for in, want := range map[string]string{
		"service[0].backend[1].address": "service[0].backend[1]",
		"service[0].backend[1]":         "service[0].backend",
		"service[0]":                    "service",
		"service":                       "",
		`a."b.c[1]"`:                    "a",
		`a."b\"."`:                      "a",
	} {
		if got := parentPath(in); got != want {
			t.Errorf("parentPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSmallHelpers(t *testing.T) {
	for lvl, want := range map[string]string{"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR", "": "INFO"} {
		if got := (Log{Level: lvl}).SlogLevel().String(); got != want {
			t.Errorf("SlogLevel(%q) = %s, want %s", lvl, got, want)
		}
	}
	for k, want := range map[Kind]bool{KindTCP: false, KindHTTP: false, KindPostgres: true, KindRedis: true, KindMySQL: true, KindExec: true} {
		if k.RoleAware() != want {
			t.Errorf("%s.RoleAware() = %v", k, !want)
		}
	}
	for n, want := range map[int]int{1: 1, 2: 2, 3: 2, 4: 3, 5: 3} {
		if q := (&Cluster{Peers: make([]Peer, n)}).Quorum(); q != want {
			t.Errorf("Quorum of %d = %d, want %d", n, q, want)
		}
	}
}

// Keys the cluster ignores for the services it routes are warned about.
func TestClusterIgnoredKeysWarn(t *testing.T) {
	src := `
[cluster]
node_name = "a"
insecure = true
state_dir = "/tmp/x"
[[cluster.peer]]
name = "a"
address = "127.0.0.1:7001"
[[service]]
name = "s"
listen = "127.0.0.1:7000"
failback = "auto"
max_lag_on_failover = "5s"
[[service.backend]]
name = "b1"
address = "127.0.0.1:1"
[[service.backend]]
name = "b2"
address = "127.0.0.1:2"
`
	_, warnings, err := Parse("c.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range warnings {
		got = append(got, w.Error())
	}
	joined := strings.Join(got, "\n")
	if want := `failback = "auto" has no effect under [cluster]`; !strings.Contains(joined, want) {
		t.Errorf("no warning %q in:\n%s", want, joined)
	}
	// The cluster bounds candidates by lag in time as a proxy alone does.
	if strings.Contains(joined, "max_lag_on_failover") {
		t.Errorf("a warning about max_lag_on_failover, which the cluster uses:\n%s", joined)
	}
}

// With bind left out, gossip listens on this proxy's own peer address, so a
// service may not take that port, and the message names where it came from.
func TestDefaultBindIsThePeerAddress(t *testing.T) {
	const text = `[cluster]
node_name = "qp1"
insecure = true
state_dir = "state"
peer = [{ name = "qp1", address = "127.0.0.1:7000" }, { name = "qp2", address = "127.0.0.2:7000" }, { name = "qp3", address = "127.0.0.3:7000" }]

[[service]]
name = "pg"
listen = "0.0.0.0:7000"
backend = [{ name = "a", address = "127.0.0.1:5432" }]
`
	_, _, err := Parse("qp.toml", []byte(text))
	want := `qp.toml:9:1: service "pg": listen "0.0.0.0:7000": overlaps [cluster] bind "127.0.0.1:7000"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v\nwant a problem %q", err, want)
	}
}

// An interval set alone at or below the default timeout takes half of it
// as its timeout (the packaged config's `interval = "1s"` was refused when
// the default timeout was 1s); a timeout set explicitly is still checked
// against it.
func TestShortIntervalDefaultTimeout(t *testing.T) {
	dir := t.TempDir()
	write := func(health string) string {
		p := filepath.Join(dir, "qp.toml")
		text := "[[service]]\nname = \"pg\"\nlisten = \"127.0.0.1:6432\"\nhealth = " + health +
			"\nbackend = [{ name = \"a\", address = \"127.0.0.1:5432\" }, { name = \"b\", address = \"127.0.0.1:5433\" }]\n"
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		interval     string
		want, wantFI time.Duration
	}{
		{"1s", 900 * time.Millisecond, 50 * time.Millisecond},    // the default timeout fits
		{"900ms", 450 * time.Millisecond, 50 * time.Millisecond}, // fast_interval's floor
		{"2s", 900 * time.Millisecond, 100 * time.Millisecond},
		{"5s", 900 * time.Millisecond, 250 * time.Millisecond},
	} {
		cfg, _, err := parseFile(t, write(`{ interval = "`+c.interval+`" }`))
		if err != nil {
			t.Fatal(err)
		}
		if h := cfg.Services[0].Health; h.Timeout != c.want || h.FastInterval != c.wantFI {
			t.Errorf("interval %s alone: timeout %v, fast_interval %v; want %v, %v", c.interval, h.Timeout, h.FastInterval, c.want, c.wantFI)
		}
	}
	if _, _, err := parseFile(t, write(`{ interval = "1s", timeout = "1s" }`)); err == nil || !strings.Contains(err.Error(), "must be below interval") {
		t.Errorf("an explicit timeout equal to the interval: %v, want refused", err)
	}
}

// The timings a cluster leaves out: the lease and what derives from it,
// and switch_hold, which every service inherits.
func TestClusterTimingDefaults(t *testing.T) {
	text := `[cluster]
node_name = "qp1"
secret_key_file = "gossip.key"
state_dir = "state"
peer = [{ name = "qp1", address = "127.0.0.1:17946" }, { name = "qp2", address = "127.0.0.2:17946" }, { name = "qp3", address = "127.0.0.3:17946" }]

[[service]]
name = "pg"
listen = "127.0.0.1:6432"
backend = [{ name = "a", address = "127.0.0.1:5432" }, { name = "b", address = "127.0.0.1:5433" }]
`
	cfg, _, err := Parse("cluster.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Cluster
	if c.LeaseTimeout != 2*time.Second || c.SwitchHold != 2*time.Second || cfg.Services[0].SwitchHold != 2*time.Second {
		t.Errorf("lease_timeout %v, switch_hold %v (service %v); want 2s each", c.LeaseTimeout, c.SwitchHold, cfg.Services[0].SwitchHold)
	}
	if c.ObservationTTL() != 3*time.Second || c.VoteTimeout() != 2*time.Second {
		t.Errorf("observation TTL %v, vote timeout %v; want 3s, 2s", c.ObservationTTL(), c.VoteTimeout())
	}

	// Across regions the lease, and memberlist's timings, are longer unless set.
	wan := strings.Replace(text, `state_dir = "state"`, "state_dir = \"state\"\nnetwork = \"wan\"", 1)
	cfg, _, err = Parse("wan.toml", []byte(wan))
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Cluster; c.LeaseTimeout != 3*time.Second || c.GossipInterval != 500*time.Millisecond || c.ProbeInterval != 5*time.Second {
		t.Errorf("wan: lease_timeout %v, gossip %v, probe %v; want 3s, 500ms, 5s", c.LeaseTimeout, c.GossipInterval, c.ProbeInterval)
	}
	set := strings.Replace(wan, `network = "wan"`, "network = \"wan\"\nlease_timeout = \"5s\"", 1)
	if cfg, _, err = Parse("wan.toml", []byte(set)); err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster.LeaseTimeout != 5*time.Second {
		t.Errorf("wan with lease_timeout 5s: %v", cfg.Cluster.LeaseTimeout)
	}
}
