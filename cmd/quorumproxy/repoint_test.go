package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// Replicas follow the new primary: after a failover the remaining
// replicas, and the old primary once it is back, replicate from the new
// one. Redis is built in (REPLICAOF, with the check's login); any other
// kind runs the repoint hook.

// replication is INFO replication of a Redis server as fields ("" when it
// does not answer).
func replication(r *testenv.Redis) map[string]string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := r.Client().Info(ctx, "replication").Result()
	out := map[string]string{}
	if err != nil {
		return out
	}
	for _, l := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok {
			out[k] = v
		}
	}
	return out
}

// streamsFrom reports whether replica replicates from primary with its link
// up, and where it stands.
func streamsFrom(replica, primary *testenv.Redis) func() (bool, string) {
	return func() (bool, string) {
		f := replication(replica)
		state := fmt.Sprintf("%s: role %q master_port %q link %q (want a replica of port %d)",
			replica.Addr(), f["role"], f["master_port"], f["master_link_status"], primary.Port())
		return f["role"] == "slave" && f["master_port"] == strconv.Itoa(primary.Port()) && f["master_link_status"] == "up", state
	}
}

// holds reports whether r has key with value v.
func holds(r *testenv.Redis, key, v string) func() bool {
	return func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		got, err := r.Client().Get(ctx, key).Result()
		return err == nil && got == v
	}
}

// setThrough writes key through the proxy at listen (retrying until the
// proxy forwards to a primary).
func setThrough(t *testing.T, listen, password, key, v string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: listen, Password: password, MaxRetries: -1, DialTimeout: 3 * time.Second, DisableIdentity: true})
	defer c.Close()
	testwait.For(t, "a write through the proxy", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return c.Set(ctx, key, v, time.Hour).Err() == nil
	})
}

// repointEntries are the proxy's history entries of built-in repoints.
func repointEntries(t *testing.T, admin string) []journal.Entry {
	h, err := (&adminapi.Client{Addr: admin}).History(context.Background(), "", 0)
	if err != nil {
		t.Fatalf("history of %s: %v", admin, err)
	}
	var out []journal.Entry
	for _, e := range h.Entries {
		if e.Kind == "repoint" {
			out = append(out, e)
		}
	}
	return out
}

// redisTrio is a Redis primary with two replicas, all with a password.
func redisTrio(t *testing.T) (r, r1, r2 *testenv.Redis) {
	t.Helper()
	testenv.Need(t, "redis")
	r = testenv.MustRedis(t, testenv.RedisOptions{Password: "repoint-s3cret"})
	r1, r2 = testenv.MustReplica(t, r), testenv.MustReplica(t, r)
	t.Setenv("QP_TEST_REDIS_PASSWORD", r.Password())
	hookLogins(t, "", r.Password())
	return r, r1, r2
}

// followAfterFailover is the scenario both Redis tests share, after the
// proxies route to r: r is killed, r1 (highest priority) is promoted, r2
// follows r1 and gets a key written after the failover; r comes back as
// an empty primary, as after a crash, and becomes r1's replica with that
// key. routesTo reports whether the proxies route to a backend; listen is
// a proxy's listen address.
func followAfterFailover(t *testing.T, r, r1, r2 *testenv.Redis, routesTo func(string) func() bool, listen string) {
	t.Helper()
	killed := time.Now()
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "routing to r1 after the failover", 60*time.Second, routesTo("r1"))
	routed := time.Now()
	testwait.ForState(t, 30*time.Second, streamsFrom(r2, r1))
	followed := time.Now()
	t.Logf("r2 streams from r1 %v after the kill, %v after every proxy routed to r1",
		followed.Sub(killed).Round(time.Millisecond), followed.Sub(routed).Round(time.Millisecond))

	setThrough(t, listen, r.Password(), "repoint:after-failover", "v1")
	testwait.For(t, "r2 holding the key written after the failover", 30*time.Second, holds(r2, "repoint:after-failover", "v1"))

	restarted := time.Now()
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	testwait.ForState(t, 30*time.Second, streamsFrom(r, r1))
	t.Logf("the old primary r streams from r1 %v after its restart", time.Since(restarted).Round(time.Millisecond))
	testwait.For(t, "r holding the key written after the failover", 30*time.Second, holds(r, "repoint:after-failover", "v1"))
	// The agreed primary is never demoted.
	if f := replication(r1); f["role"] != "master" {
		t.Fatalf("r1 is not a primary any more: %v", f)
	}
}

// Three proxies, a Redis primary and two replicas: after the primary dies
// the proxy that promoted r1 repoints r2, and the old primary once it is
// back; no other proxy does.
func TestRepointRedisCluster(t *testing.T) {
	r, r1, r2 := redisTrio(t)
	backends := []promoBackend{{"r", r.Addr(), 10}, {"r1", r1.Addr(), 100}, {"r2", r2.Addr(), 50}}
	c := newPromoCluster(t, promoRedis, backends, promoHooks{promote: promoRedis.promote})
	c.start()
	testwait.For(t, "every proxy routing to r", 60*time.Second, c.routes("r"))

	followAfterFailover(t, r, r1, r2, c.routes, c.ps[0].listen)
	c.holdsOnePrimary(backends, "r1", time.Second)

	// One proxy acted: the one that ran the promote.
	var actors []string
	var entries []journal.Entry
	for _, p := range c.ps {
		if es := repointEntries(t, p.admin); len(es) > 0 {
			actors = append(actors, p.name)
			entries = append(entries, es...)
		}
	}
	if len(actors) != 1 {
		t.Fatalf("proxies that repointed: %v, want one; entries %+v", actors, entries)
	}
	epoch := c.ps[0].clusterService(t).Epoch
	var r2Runs, rRuns int
	for _, e := range entries {
		if e.Result != "OK" || e.Epoch != epoch || !strings.HasPrefix(e.Summary, "REPLICAOF "+r1.Addr()+" on ") {
			t.Errorf("repoint entry %+v: want REPLICAOF %s at epoch %d answered OK", e, r1.Addr(), epoch)
		}
		switch {
		case strings.Contains(e.Summary, " on r2 "):
			r2Runs++
		case strings.Contains(e.Summary, " on r "):
			rRuns++
		default:
			t.Errorf("repoint of another backend: %+v", e)
		}
	}
	if r2Runs != 1 || rRuns != 1 {
		t.Fatalf("REPLICAOF sent %d times to r2 and %d times to r, want once each: %+v", r2Runs, rRuns, entries)
	}
	for _, p := range c.ps {
		if p.name == actors[0] {
			lines := grepLines(p.d.logs.String(), "repoint: replica now follows the new primary")
			if lines == "" {
				t.Errorf("%s does not log the repoint", p.name)
			}
			t.Logf("%s:\n%s", p.name, lines)
		}
	}
}

const loneRedisConfig = `
[admin]
listen = %q

[[service]]
name = "db"
listen = %q
role = "primary"
switch_hold = "5s"

  [service.health]
  kind = "redis"
  password_env = "QP_TEST_REDIS_PASSWORD"
  interval = "200ms"
  timeout = "150ms"
  rise = 1
  fall = 2

  [service.hooks]
  promote = [%q]
  timeout = "10s"

  [[service.backend]]
  name = "r"
  address = %q
  priority = 10

  [[service.backend]]
  name = "r1"
  address = %q
  priority = 100

  [[service.backend]]
  name = "r2"
  address = %q
  priority = 50
`

// A proxy alone does the same after its own promote.
func TestRepointRedisAlone(t *testing.T) {
	r, r1, r2 := redisTrio(t)
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "qp.toml")
	promote, _ := filepath.Abs(filepath.Join("..", "..", "testdata", "hooks", "redis-promote"))
	cfg := fmt.Sprintf(loneRedisConfig, admin, listen, promote, r.Addr(), r1.Addr(), r2.Addr())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath, admin)
	routesTo := func(b string) func() bool {
		return func() bool {
			s := d.service(t, "db")
			if s == nil || s.Target != b {
				return false
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			ok, err := promoRedis.primary(ctx, listen)
			return err == nil && ok
		}
	}
	testwait.For(t, "target r", 30*time.Second, routesTo("r"))
	followAfterFailover(t, r, r1, r2, routesTo, listen)

	es := repointEntries(t, admin)
	if len(es) != 2 || !strings.Contains(es[0].Summary, " on r2 ") || !strings.Contains(es[1].Summary, " on r ") {
		t.Fatalf("repoint entries %+v: want r2 then r", es)
	}
	for _, e := range es {
		if e.Result != "OK" || e.Epoch != 0 {
			t.Errorf("repoint entry %+v: want OK at epoch 0", e)
		}
	}
}

// withRepointHook adds a repoint hook to every proxy's config of c: a
// script that appends its QP_* environment and its parent (the proxy's
// pid) as one line to calls, then runs cmd (a shell command).
func withRepointHook(t *testing.T, c *promoCluster, cmd string) (calls string) {
	t.Helper()
	calls = filepath.Join(c.dir, "repoint.calls")
	script := filepath.Join(c.dir, "repoint.sh")
	body := fmt.Sprintf("#!/bin/sh\necho \"pid=$PPID $(env | grep '^QP_' | sort | tr '\\n' ' ')\" >> %q\n%s\n", calls, cmd)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.ps {
		data, err := os.ReadFile(p.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg := strings.Replace(string(data), "  [service.hooks]\n", fmt.Sprintf("  [service.hooks]\n  repoint = [%q]\n", script), 1)
		if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return calls
}

// hookCall is one run of the repoint hook: its environment's QP_*
// variables and "pid", the proxy that ran it.
type hookCall map[string]string

// repointCalls reads the calls so far, those of backend ("" for all).
func repointCalls(path, backend string) []hookCall {
	data, _ := os.ReadFile(path)
	var out []hookCall
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		c := hookCall{}
		for _, f := range strings.Fields(l) {
			if k, v, ok := strings.Cut(f, "="); ok {
				c[k] = v
			}
		}
		if len(c) > 0 && (backend == "" || c["QP_BACKEND"] == backend) {
			out = append(out, c)
		}
	}
	return out
}

// A PostgreSQL primary with two standbys behind three proxies: after the
// primary dies, the proxy that promoted s1 runs the repoint hook once for
// s2, with the right environment, and the sample pg-repoint makes s2
// stream from s1 (a row written on s1 reaches it). The old primary, back
// as a primary, gets the hook too; the sample refuses it (it needs
// pg_rewind) and nothing demotes anything.
func TestRepointHookPostgres(t *testing.T) {
	testenv.Need(t, "postgres")
	p := testenv.MustPostgres(t, testenv.PGOptions{})
	s1, s2 := testenv.MustStandby(t, p, false), testenv.MustStandby(t, p, false)
	t.Setenv("QP_TEST_PG_PASSWORD", p.Password())
	hookLogins(t, p.Password(), "")
	backends := []promoBackend{{"p", p.Addr(), 10}, {"s1", s1.Addr(), 100}, {"s2", s2.Addr(), 50}}
	c := newPromoCluster(t, promoPostgres, backends, promoHooks{promote: promoPostgres.promote})
	calls := withRepointHook(t, c, "exec "+sampleHook("pg-repoint"))
	c.start()
	testwait.For(t, "every proxy routing to p", 60*time.Second, c.routes("p"))
	if n := len(repointCalls(calls, "")); n != 0 {
		t.Fatalf("%d repoint calls at bootstrap, want none", n)
	}

	killed := time.Now()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "every proxy routing to s1 after the failover", 60*time.Second, c.routes("s1"))
	testwait.For(t, "the repoint hook run for s2", 30*time.Second, func() bool { return len(repointCalls(calls, "s2")) > 0 })
	ctx := context.Background()
	testwait.ForState(t, 30*time.Second, func() (bool, string) {
		var state string
		err := s1.QueryRow(ctx, "SELECT state FROM pg_stat_replication WHERE application_name = $1", s2.Name()).Scan(&state)
		return err == nil && state == "streaming", fmt.Sprintf("s2 in s1's pg_stat_replication: %q (%v)", state, err)
	})
	t.Logf("s2 streams from s1 %v after the kill", time.Since(killed).Round(time.Millisecond))
	for _, cp := range c.ps {
		if l := grepLines(cp.d.logs.String(), "repoint"); l != "" {
			t.Logf("%s:\n%s", cp.name, l)
		}
	}
	if err := s1.Exec(ctx, "CREATE TABLE repoint_after_failover AS SELECT 42 AS v"); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "s2 holding a row written on s1 after the failover", 30*time.Second, func() bool {
		var v int
		return s2.QueryRow(ctx, "SELECT v FROM repoint_after_failover").Scan(&v) == nil && v == 42
	})

	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the repoint hook run for the old primary p", 30*time.Second, func() bool { return len(repointCalls(calls, "p")) > 0 })
	if rec, err := p.InRecovery(ctx); err != nil || rec {
		t.Fatalf("p after the sample hook refused it: in recovery %v, err %v; want a primary still", rec, err)
	}
	if rec, err := s1.InRecovery(ctx); err != nil || rec {
		t.Fatalf("s1, the agreed primary: in recovery %v, err %v", rec, err)
	}

	epoch := c.ps[0].clusterService(t).Epoch
	all := repointCalls(calls, "")
	if got := repointCalls(calls, "s2"); len(got) != 1 {
		t.Fatalf("repoint hook runs for s2: %v, want one", got)
	}
	pid := all[0]["pid"]
	for _, call := range all {
		want := map[string]string{"QP_SERVICE": "db", "QP_EVENT": "repoint", "QP_EPOCH": strconv.FormatUint(epoch, 10),
			"QP_NEW_BACKEND": "s1", "QP_NEW_ADDRESS": s1.Addr(), "pid": pid}
		switch call["QP_BACKEND"] {
		case "s2":
			want["QP_ADDRESS"] = s2.Addr()
		case "p":
			want["QP_ADDRESS"] = p.Addr()
		default:
			t.Errorf("repoint hook run for %q: %v", call["QP_BACKEND"], call)
		}
		for k, v := range want {
			if call[k] != v {
				t.Errorf("repoint hook run %v: %s = %q, want %q", call, k, call[k], v)
			}
		}
	}
	var actor *clusterProxy
	for _, cp := range c.ps {
		if strconv.Itoa(cp.d.cmd.Process.Pid) == pid {
			actor = cp
		}
	}
	if actor == nil {
		t.Fatalf("the repoint hook's parent %s is none of the proxies", pid)
	}
	// The hook's run is in the history once it ended.
	var ok, failed int
	testwait.ForState(t, 30*time.Second, func() (bool, string) {
		h, err := (&adminapi.Client{Addr: actor.admin}).History(ctx, "db", 0)
		if err != nil {
			return false, err.Error()
		}
		ok, failed = 0, 0
		for _, e := range h.Entries {
			if e.Kind == "hook" && e.Hook == "repoint" {
				switch {
				case strings.HasPrefix(e.Summary, "repoint hook (s2 -> s1)") && e.Result == "exit 0":
					ok++
				case strings.HasPrefix(e.Summary, "repoint hook (p -> s1)") && e.Result != "exit 0" && strings.Contains(e.Output, "pg_rewind"):
					failed++
				default:
					t.Errorf("history entry %+v", e)
				}
			}
		}
		return ok == 1 && failed > 0, fmt.Sprintf("history of %s: %d repoint runs for s2 that worked (want 1), %d for p that failed (want some)", actor.name, ok, failed)
	})
	if got := repointCalls(calls, "s2"); len(got) != 1 {
		t.Fatalf("repoint hook runs for s2 in the end: %v, want one", got)
	}
}

// following reports whether m replicates from primary with both threads
// running, and where it stands.
func following(m, primary *testenv.MariaDB) func() (bool, string) {
	return func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		st, err := m.SlaveStatus(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st["Master_Port"] == strconv.Itoa(primary.Port()) && st["Slave_IO_Running"] == "Yes" && st["Slave_SQL_Running"] == "Yes",
			fmt.Sprintf("%s: master port %q io %q sql %q (%s%s), want a replica of port %d", m.Addr(), st["Master_Port"],
				st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"], primary.Port())
	}
}

// The sample mariadb-repoint through three proxies: after the primary
// dies, m2 replicates from the promoted m1 by GTID and gets a row written
// on m1; the old primary, back as a writable primary, is made a read-only
// replica of m1 from its own binary log's position and gets the row too.
func TestRepointHookMariaDB(t *testing.T) {
	testenv.Need(t, "mariadb")
	m := testenv.MustMariaDB(t)
	m1, m2 := testenv.MustMariaDBReplica(t, m), testenv.MustMariaDBReplica(t, m)
	t.Setenv("QP_TEST_MYSQL_PASSWORD", testenv.DefaultPassword)
	hookLogins(t, "", "")
	t.Setenv("QP_MARIADB_REPL_USER", testenv.User)
	t.Setenv("QP_MARIADB_REPL_PASSWORD", testenv.DefaultPassword)
	ctx := context.Background()
	if err := m.Exec(ctx, "CREATE TABLE qp.repoint_before (v INT)"); err != nil {
		t.Fatal(err)
	}
	backends := []promoBackend{{"m", m.Addr(), 10}, {"m1", m1.Addr(), 100}, {"m2", m2.Addr(), 50}}
	c := newPromoCluster(t, promoMySQL, backends, promoHooks{promote: promoMySQL.promote})
	calls := withRepointHook(t, c, "exec "+sampleHook("mariadb-repoint"))
	c.start()
	testwait.For(t, "every proxy routing to m", 60*time.Second, c.routes("m"))
	testwait.ForState(t, 30*time.Second, following(m2, m))

	killed := time.Now()
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "every proxy routing to m1 after the failover", 60*time.Second, c.routes("m1"))
	testwait.ForState(t, 30*time.Second, following(m2, m1))
	t.Logf("m2 replicates from m1 %v after the kill", time.Since(killed).Round(time.Millisecond))
	if err := m1.Exec(ctx, "INSERT INTO qp.repoint_before VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	has := func(s *testenv.MariaDB) func() bool {
		return func() bool {
			var n int
			return s.QueryRow(ctx, "SELECT COUNT(*) FROM qp.repoint_before WHERE v = 42").Scan(&n) == nil && n == 1
		}
	}
	testwait.For(t, "m2 holding the row written on m1", 30*time.Second, has(m2))

	// The harness creates its user again at every start (its init file):
	// not binary-logged, so that m comes back as an old primary that took
	// no writes m1 never saw. (One that did stops with a GTID error, for an
	// operator: the sample says so.)
	initFile := filepath.Join(filepath.Dir(m.LogPath()), "init.sql")
	init, err := os.ReadFile(initFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initFile, append([]byte("SET sql_log_bin = 0;\n"), init...), 0o600); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	testwait.ForState(t, 30*time.Second, following(m, m1))
	t.Logf("the old primary m replicates from m1 %v after its restart", time.Since(restarted).Round(time.Millisecond))
	testwait.For(t, "m holding the row written on m1", 30*time.Second, has(m))
	if ro, err := m.ReadOnly(ctx); err != nil || !ro {
		t.Fatalf("m read_only %v (%v), want on", ro, err)
	}
	if got := repointCalls(calls, "m2"); len(got) != 1 {
		t.Fatalf("repoint hook runs for m2: %v, want one", got)
	}
	if got := repointCalls(calls, "m1"); len(got) != 0 {
		t.Fatalf("repoint hook runs for the new primary m1: %v", got)
	}
	c.holdsOnePrimary(backends, "m1", time.Second)
}
