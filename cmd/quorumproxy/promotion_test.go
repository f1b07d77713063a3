package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// The promise is kept at the database, not only at the proxy: these tests
// run three real proxy processes in front of real PostgreSQL, Redis and
// MariaDB servers, act on them through the proxies' hooks, and count the
// servers that report primary.

// promoKind is how the tests talk to one kind of database.
type promoKind struct {
	kind string // [service.health] kind
	auth string // the health check's login keys
	// promote and fence are the sample hooks the README gives
	// (testdata/hooks), run as shell commands ("" for none).
	promote, fence string
	// primary reports whether the server at addr (a backend, or the
	// proxy's listen address) accepts writes.
	primary func(ctx context.Context, addr string) (bool, error)
}

var promoPostgres = promoKind{
	kind: "postgres",
	auth: `  user = "qp"
  database = "postgres"
  password_env = "QP_TEST_PG_PASSWORD"`,
	promote: sampleHook("pg-promote"),
	primary: func(ctx context.Context, addr string) (bool, error) {
		host, port, _ := strings.Cut(addr, ":")
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=qp dbname=postgres password=%s sslmode=disable connect_timeout=3",
			host, port, os.Getenv("QP_TEST_PG_PASSWORD")))
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		var rec bool
		err = conn.QueryRow(ctx, "select pg_is_in_recovery()").Scan(&rec)
		return err == nil && !rec, err
	},
}

var promoRedis = promoKind{
	kind:    "redis",
	auth:    `  password_env = "QP_TEST_REDIS_PASSWORD"`,
	promote: sampleHook("redis-promote"),
	fence:   sampleHook("redis-fence"),
	primary: func(ctx context.Context, addr string) (bool, error) {
		c := redis.NewClient(&redis.Options{Addr: addr, Password: os.Getenv("QP_TEST_REDIS_PASSWORD"), MaxRetries: -1, DialTimeout: 3 * time.Second})
		defer c.Close()
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return false, err
		}
		return strings.Contains(info, "role:master"), nil
	},
}

var promoMySQL = promoKind{
	kind: "mysql",
	auth: `  user = "qp"
  database = "qp"
  password_env = "QP_TEST_MYSQL_PASSWORD"`,
	promote: sampleHook("mariadb-promote"),
	fence:   sampleHook("mariadb-fence"),
	primary: func(ctx context.Context, addr string) (bool, error) {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.Timeout = "qp", os.Getenv("QP_TEST_MYSQL_PASSWORD"), "tcp", addr, 3*time.Second
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			return false, err
		}
		defer db.Close()
		var ro int
		err = db.QueryRowContext(ctx, "SELECT @@global.read_only").Scan(&ro)
		return err == nil && ro == 0, err
	},
}

// sampleHook is the shell command that runs one of the sample hooks.
func sampleHook(name string) string {
	p, err := filepath.Abs(filepath.Join("..", "..", "testdata", "hooks", name))
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf("%q", p)
}

// hookLogins puts the logins the sample hooks read (libpq's PG*
// variables, REDISCLI_AUTH, a MariaDB option file) in the environment the
// proxies, and so their hooks, inherit.
func hookLogins(t *testing.T, pgPassword, redisPassword string) {
	t.Setenv("PGUSER", testenv.User)
	t.Setenv("PGDATABASE", "postgres")
	t.Setenv("PGPASSWORD", pgPassword)
	t.Setenv("REDISCLI_AUTH", redisPassword)
	opts := filepath.Join(t.TempDir(), "my.cnf")
	if err := os.WriteFile(opts, []byte(fmt.Sprintf("[client]\nuser=%s\npassword=%s\n", testenv.User, testenv.DefaultPassword)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QP_MARIADB_DEFAULTS", opts)
}

type promoBackend struct {
	name, addr string
	priority   int
}

// promoCluster is three proxy processes of one cluster in front of one
// active-passive service with role = "primary".
type promoCluster struct {
	t         *testing.T
	k         promoKind
	dir       string
	tokenFile string
	hookLog   string // every hook run appends "EPOCH ACTION BACKEND"
	ps        []*clusterProxy
}

const promoConfig = `
[admin]
listen = %q
token_file = %q

[cluster]
node_name = %q
bind = %q
secret_key_file = %q
state_dir = %q
lease_timeout = "600ms"
gossip_interval = "50ms"
probe_interval = "250ms"
rejoin_interval = "500ms"
%s
[[service]]
name = "db"
listen = %q
role = "primary"
switch_hold = "5s"

  [service.health]
  kind = %q
%s
  interval = "300ms"
  timeout = "250ms"
  rise = 1
  fall = 3

  [service.hooks]
  timeout = %q
%s
%s`

// promoHooks are the hooks of a test: shell commands by hook name.
type promoHooks struct {
	timeout        time.Duration
	promote, fence string
}

// newPromoCluster writes the configs of three proxies (not started).
func newPromoCluster(t *testing.T, k promoKind, backends []promoBackend, h promoHooks) *promoCluster {
	t.Helper()
	testenv.Need(t, k.kind)
	c := &promoCluster{t: t, k: k, dir: t.TempDir()}
	c.hookLog = filepath.Join(c.dir, "hooks.log")
	keyFile, tokenFile, peers, gossip := clusterFiles(t, c.dir)
	c.tokenFile = tokenFile
	var hooks strings.Builder
	for _, hk := range []struct{ name, cmd string }{{"promote", h.promote}, {"fence", h.fence}} {
		if hk.cmd == "" {
			continue
		}
		script := filepath.Join(c.dir, hk.name+".sh")
		body := fmt.Sprintf("#!/bin/sh\necho \"$QP_EPOCH $QP_ACTION $QP_BACKEND\" >> %q\nhost=${QP_ADDRESS%%:*}\nport=${QP_ADDRESS##*:}\n%s\n", c.hookLog, hk.cmd)
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&hooks, "  %s = [%q]\n", hk.name, script)
	}
	if h.timeout == 0 {
		h.timeout = 30 * time.Second
	}
	var bs strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&bs, "\n  [[service.backend]]\n  name = %q\n  address = %q\n  priority = %d\n", b.name, b.addr, b.priority)
	}
	for _, n := range clusterNames {
		p := &clusterProxy{name: n, admin: freeAddr(t), listen: freeAddr(t), stateDir: filepath.Join(c.dir, n+".state")}
		p.cfgPath = filepath.Join(c.dir, n+".toml")
		cfg := fmt.Sprintf(promoConfig, p.admin, c.tokenFile, n, gossip[n], keyFile, p.stateDir, peers,
			p.listen, k.kind, k.auth, h.timeout.String(), hooks.String(), bs.String())
		if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		c.ps = append(c.ps, p)
	}
	return c
}

func (c *promoCluster) start() {
	for _, p := range c.ps {
		p.d = startDaemon(c.t, p.cfgPath, p.admin)
	}
}

// hooks returns the hook runs so far ("EPOCH ACTION BACKEND"), of the
// given action ("" for all).
func (c *promoCluster) hooks(action ...string) []string {
	data, _ := os.ReadFile(c.hookLog)
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if f := strings.Fields(l); len(f) == 3 && (len(action) == 0 || f[1] == action[0]) {
			out = append(out, l)
		}
	}
	return out
}

// routes reports whether every proxy forwards to backend (with role =
// "primary": it reports primary) and a client through each reaches a
// server that accepts writes.
func (c *promoCluster) routes(backend string) func() bool {
	return func() bool {
		for _, p := range c.ps {
			if v := p.clusterService(c.t); v.Routing != backend {
				return false
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ok, err := c.k.primary(ctx, p.listen)
			cancel()
			if err != nil || !ok {
				return false
			}
		}
		return true
	}
}

// primaries lists the backends whose servers accept writes.
func (c *promoCluster) primaries(backends []promoBackend) []string {
	var out []string
	for _, b := range backends {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if ok, err := c.k.primary(ctx, b.addr); err == nil && ok {
			out = append(out, b.name)
		}
		cancel()
	}
	return out
}

// holdsOnePrimary checks for a while that exactly want accepts writes among
// backends: a second primary made by a late or mistaken promote would show
// within that time.
func (c *promoCluster) holdsOnePrimary(backends []promoBackend, want string, d time.Duration) {
	c.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); {
		if got := c.primaries(backends); len(got) != 1 || got[0] != want {
			c.t.Fatalf("servers that report primary: %v, want only %s (hooks run: %v)", got, want, c.hooks())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *promoCluster) ctl(args ...string) (string, string, int) {
	return runBin(c.t, append(args[:1:1], append([]string{"-admin", c.ps[0].admin, "-token-file", c.tokenFile, "-service", "db"}, args[1:]...)...)...)
}

// promotionAtTheDatabase runs one kind's scenario: a primary with the
// lowest priority and two replicas, the sample promote hook made to exit 1
// after it ran, and the sample fence hook when the kind has one. A new
// cluster routes to the backend that reports primary; when it dies, the
// highest-priority replica is promoted (the fence of the dead primary
// fails and holds nothing up), its hook says it failed but it reports
// primary, so nothing else is promoted; a switchover to the backend that
// already is primary runs no hook; a planned switchover to the other
// replica fences the primary first (without a fence hook it is refused,
// since it would leave two primaries).
func promotionAtTheDatabase(t *testing.T, k promoKind, backends []promoBackend, kill func() error) {
	c := newPromoCluster(t, k, backends, promoHooks{promote: k.promote + "\nexit 1", fence: k.fence})
	c.start()
	prim, first, second := backends[0], backends[1], backends[2]

	// Roles are facts: the cluster chooses the primary, not the
	// highest-priority backend.
	testwait.For(t, "every proxy routing to "+prim.name+", the one that reports primary", 60*time.Second, c.routes(prim.name))
	if h := c.hooks(); len(h) != 0 {
		t.Fatalf("hooks ran at bootstrap: %v", h)
	}

	if err := kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "every proxy routing to "+first.name+" after the failover", 60*time.Second, c.routes(first.name))
	c.holdsOnePrimary(backends[1:], first.name, 3*time.Second)
	epoch := c.ps[0].clusterService(t).Epoch
	if h := c.hooks("promote"); len(h) != 1 || !strings.HasSuffix(h[0], " promote "+first.name) {
		t.Fatalf("promote hook runs %v: want one, of %s", h, first.name)
	}
	if v := c.ps[0].clusterService(t); v.Epoch != epoch || v.Primary != first.name {
		t.Fatalf("the record moved on after a promote that worked: %+v", v)
	}

	out, errOut, code := c.ctl("switchover", "-to", first.name)
	if code != 0 || !strings.Contains(out, "done") {
		t.Fatalf("switchover to the primary: exit %d\n%s%s", code, out, errOut)
	}
	if h := c.hooks("promote"); len(h) != 1 {
		t.Fatalf("promote hook runs %v after a switchover to the primary: want none more", h)
	}

	out, errOut, code = c.ctl("switchover", "-to", second.name)
	if k.fence == "" {
		if code == 0 || !strings.Contains(errOut, "no fence hook") {
			t.Fatalf("switchover away from a primary that nothing can fence: exit %d\n%s%s; want a refusal", code, out, errOut)
		}
		c.holdsOnePrimary(backends[1:], first.name, time.Second)
		return
	}
	if code != 0 || !strings.Contains(out, "done") {
		t.Fatalf("switchover to %s: exit %d\n%s%s", second.name, code, out, errOut)
	}
	testwait.For(t, "every proxy routing to "+second.name+" after the switchover", 60*time.Second, c.routes(second.name))
	c.holdsOnePrimary(backends[1:], second.name, 2*time.Second)
	if h := c.hooks("fence"); len(h) == 0 || !strings.HasSuffix(h[len(h)-1], " fence "+first.name) {
		t.Fatalf("fence hook runs %v: want the last one on %s", h, first.name)
	}
}

func TestPromotionPostgres(t *testing.T) {
	testenv.Need(t, "postgres")
	p := testenv.MustPostgres(t, testenv.PGOptions{})
	s1, s2 := testenv.MustStandby(t, p, false), testenv.MustStandby(t, p, false)
	t.Setenv("QP_TEST_PG_PASSWORD", p.Password())
	hookLogins(t, p.Password(), "")
	promotionAtTheDatabase(t, promoPostgres,
		[]promoBackend{{"p", p.Addr(), 10}, {"s1", s1.Addr(), 100}, {"s2", s2.Addr(), 50}}, p.Kill)
}

func TestPromotionRedis(t *testing.T) {
	testenv.Need(t, "redis")
	r := testenv.MustRedis(t, testenv.RedisOptions{})
	r1, r2 := testenv.MustReplica(t, r), testenv.MustReplica(t, r)
	t.Setenv("QP_TEST_REDIS_PASSWORD", r.Password())
	hookLogins(t, "", r.Password())
	promotionAtTheDatabase(t, promoRedis,
		[]promoBackend{{"r", r.Addr(), 10}, {"r1", r1.Addr(), 100}, {"r2", r2.Addr(), 50}}, r.Kill)
}

func TestPromotionMariaDB(t *testing.T) {
	testenv.Need(t, "mariadb")
	m := testenv.MustMariaDB(t)
	m1, m2 := testenv.MustMariaDBReplica(t, m), testenv.MustMariaDBReplica(t, m)
	t.Setenv("QP_TEST_MYSQL_PASSWORD", testenv.DefaultPassword)
	hookLogins(t, "", "")
	promotionAtTheDatabase(t, promoMySQL,
		[]promoBackend{{"m", m.Addr(), 10}, {"m1", m1.Addr(), 100}, {"m2", m2.Addr(), 50}}, m.Kill)
}

// A promote that lands after its hook's timeout: the hook asks the server
// to sleep and then promote, and is killed at its timeout while the server
// goes on. The proxies wait out the settle period, see the backend report
// primary, and promote nothing else.
func TestPromotionLandsAfterTimeout(t *testing.T) {
	testenv.Need(t, "postgres")
	p := testenv.MustPostgres(t, testenv.PGOptions{})
	s1, s2 := testenv.MustStandby(t, p, false), testenv.MustStandby(t, p, false)
	t.Setenv("QP_TEST_PG_PASSWORD", p.Password())
	hookLogins(t, p.Password(), "")
	backends := []promoBackend{{"p", p.Addr(), 100}, {"s1", s1.Addr(), 50}, {"s2", s2.Addr(), 10}}
	late := `PGPASSWORD="$QP_TEST_PG_PASSWORD" psql -X -q -h "$host" -p "$port" -U qp -d postgres -c 'DO $$ BEGIN PERFORM pg_sleep(1.5); PERFORM pg_promote(); END $$'`
	c := newPromoCluster(t, promoPostgres, backends, promoHooks{timeout: time.Second, promote: late})
	c.start()
	testwait.For(t, "every proxy routing to p", 60*time.Second, c.routes("p"))
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "every proxy routing to s1 once its promote landed", 60*time.Second, c.routes("s1"))
	c.holdsOnePrimary(backends[1:], "s1", 4*time.Second)
	if h := c.hooks(); len(h) != 1 || !strings.HasSuffix(h[0], " promote s1") {
		t.Fatalf("hook runs %v: want one promote of s1", h)
	}
}

// seedState writes the state a proxy of an earlier version left: epoch 1
// committed to primary.
func seedState(t *testing.T, dir, service, primary string) {
	t.Helper()
	st, err := cluster.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	v := cluster.Value{Primary: primary, Since: 1}
	if err := st.Save(cluster.State{Synced: true, Services: map[string]cluster.ServiceState{service: {
		Record: cluster.Record{Epoch: 1, Value: v}, MaxVoted: 1, Accepted: cluster.Ballot{Epoch: 1, Value: v}}}}); err != nil {
		t.Fatal(err)
	}
}

// seededPair starts a PostgreSQL primary p (priority 50), its standby s
// (priority 100) and three proxies (hook timeout timeout, 0 for the
// default) whose state names s, as an earlier version's bootstrap left it.
func seededPair(t *testing.T, timeout time.Duration) (*promoCluster, []promoBackend) {
	t.Helper()
	testenv.Need(t, "postgres")
	p := testenv.MustPostgres(t, testenv.PGOptions{})
	s := testenv.MustStandby(t, p, false)
	t.Setenv("QP_TEST_PG_PASSWORD", p.Password())
	hookLogins(t, p.Password(), "")
	backends := []promoBackend{{"p", p.Addr(), 50}, {"s", s.Addr(), 100}}
	c := newPromoCluster(t, promoPostgres, backends, promoHooks{timeout: timeout, promote: promoPostgres.promote})
	for _, px := range c.ps {
		seedState(t, px.stateDir, "db", "s")
	}
	c.start()
	return c, backends
}

// The second primary of the issue: a cluster whose record names a replica
// (as an earlier version's bootstrap left it) while another backend is the
// primary. An operator's switchover to the real primary must not run the
// promote hook on it (an ordinary hook fails on a primary) and must not
// move on to promote the replica.
func TestPromotionSwitchoverToTheReportedPrimary(t *testing.T) {
	c, backends := seededPair(t, 0)
	testwait.For(t, "every proxy holding epoch 1 on s", 30*time.Second, func() bool {
		for _, px := range c.ps {
			if v := px.clusterService(t); v.Epoch != 1 || v.Primary != "s" || v.LeaseMS <= 0 {
				return false
			}
		}
		return true
	})
	// As an operator would, after looking: p is up on every proxy (a
	// first check can time out on a loaded machine).
	testwait.For(t, "every proxy seeing p up", 30*time.Second, func() bool {
		for _, px := range c.ps {
			s := px.d.service(t, "db")
			if s == nil || !slices.ContainsFunc(s.Backends, func(b adminapi.Backend) bool { return b.Name == "p" && b.Health == "up" }) {
				return false
			}
		}
		return true
	})
	out, errOut, code := c.ctl("switchover", "-to", "p")
	if code != 0 {
		t.Fatalf("switchover to p: exit %d\n%s%s", code, out, errOut)
	}
	testwait.For(t, "every proxy routing to p", 30*time.Second, c.routes("p"))
	c.holdsOnePrimary(backends, "p", 3*time.Second)
	if h := c.hooks(); len(h) != 0 {
		t.Fatalf("hooks ran: %v; want none (p already reports primary)", h)
	}
}

// The same state, left alone: the cluster follows the backend that reports
// primary once the record's primary has reported replica for the settle
// period, and promotes nothing.
func TestPromotionFollowsTheReportedPrimary(t *testing.T) {
	c, backends := seededPair(t, time.Second)
	testwait.For(t, "every proxy routing to p", 60*time.Second, c.routes("p"))
	c.holdsOnePrimary(backends, "p", 2*time.Second)
	if h := c.hooks(); len(h) != 0 {
		t.Fatalf("hooks ran: %v; want none", h)
	}
}

// A new cluster whose backends report no primary promotes nothing by itself
// and says so; an operator's switchover chooses one, promotes it and waits
// until it reports primary.
func TestPromotionNoPrimaryWaitsForTheOperator(t *testing.T) {
	testenv.Need(t, "postgres")
	p := testenv.MustPostgres(t, testenv.PGOptions{})
	s := testenv.MustStandby(t, p, false)
	t.Setenv("QP_TEST_PG_PASSWORD", p.Password())
	hookLogins(t, p.Password(), "")
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	backends := []promoBackend{{"p", p.Addr(), 100}, {"s", s.Addr(), 50}}
	c := newPromoCluster(t, promoPostgres, backends, promoHooks{promote: promoPostgres.promote})
	c.start()
	testwait.For(t, "a no_primary alert on every proxy", 60*time.Second, func() bool {
		for _, px := range c.ps {
			sv := px.d.service(t, "db")
			if sv == nil || !strings.Contains(strings.Join(sv.Alerts, "\n"), "no_primary") {
				return false
			}
		}
		return true
	})
	for _, px := range c.ps {
		if v := px.clusterService(t); v.Epoch != 0 || v.Routing != "" {
			t.Fatalf("%s: %+v; want no decision and no route", px.name, v)
		}
	}
	if m := getBody(t, "http://"+c.ps[0].admin+"/metrics"); !strings.Contains(m, `quorumproxy_alert_no_primary{service="db"} 1`) {
		t.Errorf("/metrics lacks the no_primary alert:\n%s", grepLines(m, "alert"))
	}
	if h := c.hooks(); len(h) != 0 {
		t.Fatalf("hooks ran: %v", h)
	}
	out, errOut, code := c.ctl("switchover", "-to", "s")
	if code != 0 || !strings.Contains(out, "done") {
		t.Fatalf("switchover to s: exit %d\n%s%s", code, out, errOut)
	}
	testwait.For(t, "every proxy routing to s", 30*time.Second, c.routes("s"))
	if h := c.hooks(); len(h) != 1 || !strings.HasSuffix(h[0], " promote s") {
		t.Fatalf("hook runs %v: want one promote of s", h)
	}
}

// A voter whose disk fails answers nothing it could not save: with one of
// three proxies' state_dir read-only, a switchover commits with the other
// two, the third neither votes (its max_voted stays) nor routes, says so
// once, and takes part again by itself once its disk is writable.
func TestPromotionStoreFailure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test mounts a proxy's state_dir read-only")
	}
	a, b := startEcho(t, "a"), startEcho(t, "b")
	ps, tokenFile := startEchoCluster(t, a, b)
	testwait.For(t, "all three proxies routing to a", 30*time.Second, allRoute(t, "a", ps))
	q3 := ps[2]
	st0, err := q3.d.status(t)
	if err != nil || st0.Cluster == nil {
		t.Fatalf("qp3 status: %v", err)
	}
	granted := st0.Cluster.Counters.VotesGranted

	stateDir := q3.stateDir
	if out, err := exec.Command("mount", "--bind", stateDir, stateDir).CombinedOutput(); err != nil {
		t.Skipf("cannot bind-mount state_dir here: %v: %s", err, out)
	}
	mounted := true
	unmount := func() {
		if mounted {
			if out, err := exec.Command("umount", stateDir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", stateDir, err, out)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount)
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", stateDir).CombinedOutput(); err != nil {
		t.Skipf("cannot remount state_dir read-only here: %v: %s", err, out)
	}

	out, errOut, code := runBin(t, "switchover", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-to", "b")
	if code != 0 {
		t.Fatalf("switchover with one proxy's disk read-only: exit %d\n%s%s", code, out, errOut)
	}
	testwait.For(t, "qp1 and qp2 routing to b", 30*time.Second, allRoute(t, "b", ps[:2]))
	epoch := ps[0].clusterService(t).Epoch
	testwait.For(t, "qp3 saying its state_dir cannot be written", 30*time.Second, func() bool {
		st, err := q3.d.status(t)
		return err == nil && st.Cluster != nil && strings.Contains(st.Cluster.StoreError, "read-only")
	})
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		v := q3.clusterService(t)
		if v.MaxVoted >= epoch || v.Epoch >= epoch {
			t.Fatalf("qp3, whose disk is read-only, holds max_voted %d and epoch %d in memory (the commit is at %d): it answered what it could not save", v.MaxVoted, v.Epoch, epoch)
		}
		if v.Routing != "" {
			t.Fatalf("qp3 routes to %q while its disk fails", v.Routing)
		}
	}
	if st, err := q3.d.status(t); err != nil || st.Cluster.Counters.VotesGranted != granted {
		t.Fatalf("qp3 granted a vote while its disk failed (%v)", err)
	}
	if n := strings.Count(q3.d.logs.String(), "state_dir cannot be written"); n != 1 {
		t.Errorf("qp3 logged the disk failure %d times, want once", n)
	}

	unmount()
	testwait.For(t, "qp3 routing to b at the new epoch once its disk works", 30*time.Second, func() bool {
		st, err := q3.d.status(t)
		return err == nil && st.Cluster.StoreError == "" && allRoute(t, "b", []*clusterProxy{q3})() && q3.clusterService(t).Epoch == epoch
	})
	if !strings.Contains(q3.d.logs.String(), "state_dir can be written again") {
		t.Error("qp3 did not say that its disk works again")
	}
}

// An operator sees how a request ended: a fence whose hook fails is
// committed, but the command exits 1 and says the hook failed; -no-wait
// returns once the request is accepted.
func TestOperatorSeesTheOutcome(t *testing.T) {
	a, b := startEcho(t, "a"), startEcho(t, "b")
	ps, tokenFile := startEchoCluster(t, a, b)
	testwait.For(t, "all three proxies routing to a", 30*time.Second, func() bool {
		for _, p := range ps {
			if r, _ := p.routing(t); r != "a" {
				return false
			}
		}
		return true
	})
	// The hooks append to hookOut: a directory there makes them fail.
	for _, p := range ps {
		if err := os.Remove(p.hookOut); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if err := os.Mkdir(p.hookOut, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := runBin(t, "fence", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-backend", "b")
	if code != 1 || !strings.Contains(errOut, "fence hook") {
		t.Fatalf("fence of b with a failing fence hook: exit %d\n%s%s; want exit 1 saying the fence hook failed", code, out, errOut)
	}
	if v := ps[0].clusterService(t); !slices.Equal(v.Fenced, []string{"b"}) {
		t.Fatalf("fenced %v: the fence itself was decided and should show", v.Fenced)
	}
	out, errOut, code = runBin(t, "unfence", "-no-wait", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-backend", "b")
	if code != 0 || strings.Contains(out, "done") {
		t.Fatalf("unfence -no-wait: exit %d\n%s%s; want the accepted answer only", code, out, errOut)
	}
	testwait.For(t, "b unfenced", 30*time.Second, func() bool { return len(ps[0].clusterService(t).Fenced) == 0 })
}

// Two backends that report primary at bootstrap: the new cluster routes
// none and says which; once one of them is gone it chooses the other.
func TestPromotionTwoPrimariesAtBootstrap(t *testing.T) {
	testenv.Need(t, "postgres")
	p := testenv.MustPostgres(t, testenv.PGOptions{})
	q := testenv.MustPostgres(t, testenv.PGOptions{Password: p.Password()})
	t.Setenv("QP_TEST_PG_PASSWORD", p.Password())
	hookLogins(t, p.Password(), "")
	backends := []promoBackend{{"p", p.Addr(), 50}, {"q", q.Addr(), 100}}
	c := newPromoCluster(t, promoPostgres, backends, promoHooks{promote: promoPostgres.promote})
	c.start()
	testwait.For(t, "a dual_primary alert naming p and q on every proxy", 60*time.Second, func() bool {
		for _, px := range c.ps {
			sv := px.d.service(t, "db")
			if sv == nil || !strings.Contains(strings.Join(sv.Alerts, "\n"), "dual_primary: p, q") {
				return false
			}
			if v := px.clusterService(t); v.Epoch != 0 || v.Routing != "" {
				t.Fatalf("%s: %+v; want no decision and no route with two primaries", px.name, v)
			}
		}
		return true
	})
	if err := q.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "every proxy routing to p once q is gone", 60*time.Second, c.routes("p"))
	if h := c.hooks(); len(h) != 0 {
		t.Fatalf("hooks ran: %v", h)
	}
}
