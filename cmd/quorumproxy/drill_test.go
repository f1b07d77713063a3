package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quorumproxy/quorumproxy/internal/drill"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// A drill against a real PostgreSQL primary with a synchronous standby: the
// drill kills the primary with its fail command, the operator's side (here
// the test, as a promote hook would) promotes the standby once the proxy
// targets it, and the report has the whole timeline, no lost acknowledged
// write, and a read-back that matches; the drill's rows are gone afterwards.
func TestDrillPostgres(t *testing.T) {
	p1, p2, d, cfgPath, _ := startPGPair(t, true)

	// A "failure" that fails nothing: no new primary, so no recovery; the
	// drill says so, exits 1, and still accounts for every write.
	var out0, errb0 bytes.Buffer
	if code := run([]string{"drill", "-config", cfgPath, "-service", "pg", "-warmup", "300ms", "-timeout", "1s", "--", "/bin/true"}, &out0, &errb0); code != 1 {
		t.Fatalf("drill with a no-op failure: exit %d, want 1:\n%s\n%s", code, errb0.String(), out0.String())
	}
	if !strings.Contains(out0.String(), "not recovered") || !strings.Contains(out0.String(), "RPO: 0 acknowledged writes lost") {
		t.Errorf("no-op drill report:\n%s", out0.String())
	}

	promoted := promoteWhenTargeted(t, d, "p2", p2.Promote)

	var out, errb bytes.Buffer
	code := run([]string{"drill", "-config", cfgPath, "-service", "pg", "-warmup", "1s", "-after", "1s", "-timeout", "30s", "-json",
		"--", "/bin/sh", "-c", fmt.Sprintf("pkill -KILL -P %[1]d; kill -KILL %[1]d", p1.Pid())}, &out, &errb)
	if code != 0 {
		t.Fatalf("drill exit %d:\n%s\n%s", code, errb.String(), out.String())
	}
	select {
	case err := <-promoted:
		if err != nil {
			t.Fatalf("promote: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy never targeted p2")
	}
	var rep drill.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out.String())
	}
	t.Logf("drill: down %+.3fs decided %+.3fs routed %+.3fs RTO %.3fs (window %.3fs); %d acknowledged, %d failed, %d lost",
		rep.DownAt, rep.DecidedAt, rep.RoutedAt, rep.RTO, rep.Window, rep.Acked, rep.Failed, rep.Lost)
	// The primary is gone until p2 is promoted after the proxy targets it:
	// writes must have paused at least until the proxy decided.
	if !rep.Recovered || rep.RTO < rep.DecidedAt || rep.Window <= 0 || rep.OldTarget != "p1" || rep.NewTarget != "p2" {
		t.Errorf("want a recovery from p1 to p2 with an RTO: %+v", rep)
	}
	if rep.DownAt < 0 || rep.DecidedAt < rep.DownAt || rep.RoutedAt < rep.DecidedAt {
		t.Errorf("timeline out of order or missing (down %v, decided %v, routed %v)", rep.DownAt, rep.DecidedAt, rep.RoutedAt)
	}
	if rep.Acked == 0 || rep.Found+rep.Lost != rep.Acked {
		t.Errorf("read-back does not add up: %d acknowledged, %d found, %d lost", rep.Acked, rep.Found, rep.Lost)
	}
	var text bytes.Buffer
	rep.Print(&text)
	for _, want := range []string{"primary seen down:", "new primary decided:", "p2", "RTO (writes acknowledged again)", "RPO: 0 acknowledged writes lost"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, text.String())
		}
	}
	t.Logf("report:\n%s", text.String())
	// A synchronous standby holds every acknowledged commit.
	if rep.Lost != 0 {
		t.Errorf("%d acknowledged writes lost with a synchronous standby: %v", rep.Lost, rep.LostIDs)
	}

	// The drill cleans up its own rows.
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	conn, err := pgx.Connect(cctx, p2.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(cctx)
	var left int
	if err := conn.QueryRow(cctx, "SELECT count(*) FROM "+drill.Table+" WHERE run = $1", rep.Run).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rows of run %s left behind", left, rep.Run)
	}
}

// promoteWhenTargeted promotes the standby once the daemon targets it, as
// an operator's promote hook would; the result arrives on the channel.
func promoteWhenTargeted(t *testing.T, d *daemonProc, standby string, promote func() error) <-chan error {
	promoted := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for ctx.Err() == nil {
			if st, err := d.status(t); err == nil && len(st.Services) > 0 && st.Services[0].Target == standby {
				promoted <- promote()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return promoted
}

// Bad drills are refused before anything is failed, saying why.
func TestDrillRefuses(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "qp.toml")
	cfg := `
[admin]
listen = ""

[[service]]
name = "web"
listen = "127.0.0.1:1"
  [[service.backend]]
  name = "a"
  address = "127.0.0.1:2"
`
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "failed")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-config", cfgPath, "-service", "web"}, 2, "usage"},
		{[]string{"-config", cfgPath, "-service", "web", "-switchover-to", "a", "--", "/bin/true"}, 2, "usage"},
		{[]string{"-config", cfgPath, "-service", "web", "-switchover", "--", "/bin/true"}, 2, "usage"},
		{[]string{"-config", cfgPath, "-service", "web", "-switchover", "-switchover-to", "a"}, 2, "usage"},
		{[]string{"-config", cfgPath, "-service", "web", "-repeat", "0", "--", "/bin/true"}, 2, "usage"},
		{[]string{"-config", cfgPath, "-service", "web", "-switchover", "-repeat", "2"}, 1, "needs the admin API"},
		{[]string{"-config", cfgPath, "-service", "nope", "--", "/usr/bin/touch", marker}, 1, `no service "nope"`},
		{[]string{"-config", cfgPath, "-service", "web", "--", "/usr/bin/touch", marker}, 1, "postgres, redis or mysql"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"drill"}, c.args...), &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.want) {
			t.Errorf("drill %v: exit %d (want %d), stderr %q (want %q)", c.args, code, c.code, errb.String(), c.want)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a refused drill ran its fail command")
	}
}

var redisConfig = pairConfig("cache", "redis", `  password_env = "QP_TEST_REDIS_PASSWORD"`, [2]string{"r1", "r2"})

// The same drill against Redis: the replica is promoted with REPLICAOF NO
// ONE once the proxy targets it. Replication is asynchronous, so a write
// the dying primary acknowledged may be lost; the report must account for
// every acknowledged write either way.
func TestDrillRedis(t *testing.T) {
	r1 := testenv.MustRedis(t, testenv.RedisOptions{})
	r2 := testenv.MustReplica(t, r1)
	t.Setenv("QP_TEST_REDIS_PASSWORD", r1.Password())
	replicaDrill(t, redisConfig, "cache", [2]string{r1.Addr(), r2.Addr()}, [2]string{"r1", "r2"}, r1.Pid(), r2.Promote)
	// The drill's keys are gone.
	n, err := r2.Client().Keys(context.Background(), "quorumproxy:drill:*").Result()
	if err != nil || len(n) != 0 {
		t.Errorf("drill keys left behind: %d (%v)", len(n), err)
	}
}

// replicaDrill runs a daemon with cfg (admin, listen and the two backend
// addresses to fill in), kills the primary (names[0], process pid) with
// the drill's fail command, promotes names[1] once the proxy targets it,
// and checks the report: a recovery between the two, and a read-back that
// accounts for every acknowledged write.
func replicaDrill(t *testing.T, cfg, service string, addrs, names [2]string, pid int, promote func() error) drill.Report {
	t.Helper()
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "qp.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(cfg, admin, listen, addrs[0], addrs[1])), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath, admin)
	testwait.For(t, "target "+names[0], 30*time.Second, func() bool {
		s := d.service(t, service)
		return s != nil && s.Target == names[0]
	})
	promoted := promoteWhenTargeted(t, d, names[1], promote)
	var out, errb bytes.Buffer
	code := run([]string{"drill", "-config", cfgPath, "-service", service, "-warmup", "1s", "-after", "1s", "-timeout", "30s", "-json",
		"--", "/bin/kill", "-KILL", strconv.Itoa(pid)}, &out, &errb)
	if code != 0 {
		t.Fatalf("drill exit %d:\n%s\n%s", code, errb.String(), out.String())
	}
	if err := <-promoted; err != nil {
		t.Fatalf("promote: %v", err)
	}
	var rep drill.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out.String())
	}
	t.Logf("drill: down %+.3fs decided %+.3fs routed %+.3fs RTO %.3fs (window %.3fs); %d acknowledged, %d failed, %d lost",
		rep.DownAt, rep.DecidedAt, rep.RoutedAt, rep.RTO, rep.Window, rep.Acked, rep.Failed, rep.Lost)
	if !rep.Recovered || rep.RTO < rep.DecidedAt || rep.OldTarget != names[0] || rep.NewTarget != names[1] {
		t.Errorf("want a recovery from %s to %s with an RTO: %+v", names[0], names[1], rep)
	}
	if rep.Acked == 0 || rep.Found+rep.Lost != rep.Acked {
		t.Errorf("read-back does not add up: %d acknowledged, %d found, %d lost", rep.Acked, rep.Found, rep.Lost)
	}
	return rep
}

var mysqlConfig = pairConfig("db", "mysql", `  user = "qp"
  database = "qp"
  password_env = "QP_TEST_MYSQL_PASSWORD"`, [2]string{"m1", "m2"})

// The drill against a real MariaDB primary and its GTID replica: the
// replica is promoted (replication stopped, read_only off) once the proxy
// targets it. Replication is asynchronous: the report must account for
// every acknowledged write, and the drill's rows are gone afterwards.
func TestDrillMySQL(t *testing.T) {
	m1 := testenv.MustMariaDB(t)
	m2 := testenv.MustMariaDBReplica(t, m1)
	t.Setenv("QP_TEST_MYSQL_PASSWORD", testenv.DefaultPassword)
	replicaDrill(t, mysqlConfig, "db", [2]string{m1.Addr(), m2.Addr()}, [2]string{"m1", "m2"}, m1.Pid(), m2.Promote)
	var n int
	if err := m2.QueryRow(context.Background(), "SELECT COUNT(*) FROM qp."+drill.Table).Scan(&n); err != nil || n != 0 {
		t.Errorf("drill rows left behind: %d (%v)", n, err)
	}
}

// Three drills in a row, each a voted switchover to the other backend
// (switchovers go through a cluster: three proxies in front of a Redis
// primary and its replica, with the sample fence and promote hooks), with
// a Markdown record: every run recovers, back and forth (the third one
// moves away from a backend that a fence hook demoted and a promote made
// primary again: it must be fenced again), the aggregate adds up, and the
// record has its sections.
func TestDrillRepeatSwitchover(t *testing.T) {
	testenv.Need(t, "redis")
	r1 := testenv.MustRedis(t, testenv.RedisOptions{})
	r2 := testenv.MustReplica(t, r1)
	waitStreaming(t, r1, r2)
	t.Setenv("QP_TEST_REDIS_PASSWORD", r1.Password())
	hookLogins(t, "", r1.Password())
	c := newPromoCluster(t, promoRedis, []promoBackend{{"r1", r1.Addr(), 100}, {"r2", r2.Addr(), 50}},
		promoHooks{promote: promoRedis.promote, fence: promoRedis.fence})
	c.start()
	testwait.For(t, "every proxy routing to r1", 60*time.Second, c.routes("r1"))

	record := filepath.Join(t.TempDir(), "drill.md")
	var out, errb bytes.Buffer
	code := run([]string{"drill", "-config", c.ps[0].cfgPath, "-service", "db", "-switchover", "-repeat", "3", "-settle", "30s",
		"-warmup", "500ms", "-after", "500ms", "-timeout", "20s", "-json", "-report", record}, &out, &errb)
	if code != 0 {
		t.Fatalf("drill exit %d:\n%s\n%s", code, errb.String(), out.String())
	}
	var s drill.Series
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("series: %v\n%s", err, out.String())
	}
	checkSeries(t, &s, 3)
	// Back and forth, the one primary least recently first.
	for i, want := range [][2]string{{"r1", "r2"}, {"r2", "r1"}, {"r1", "r2"}} {
		if r := s.Runs[i]; r.OldTarget != want[0] || r.NewTarget != want[1] || r.Failure != "switchover to "+want[1] || r.EpochTo <= r.EpochFrom {
			t.Errorf("run %d: %s -> %s (%s, epoch %d -> %d), want %s -> %s", i+1, r.OldTarget, r.NewTarget, r.Failure, r.EpochFrom, r.EpochTo, want[0], want[1])
		}
	}
	if s.Config == nil || s.Config.Cluster == nil || s.Config.Cluster.Size != 3 || s.ServerVersions["r1"] == "" {
		t.Errorf("record metadata: config %+v, server versions %v", s.Config, s.ServerVersions)
	}
	md, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# Failover drill: service `db`, ", "| Date (UTC) | ", "| quorumproxy | " + version + " |",
		"| Host | ", "| Failure | switchover to another healthy backend", "## Configuration", "- Cluster: 3 proxies (quorum 2)",
		"| r1 | " + r1.Addr() + " | 100 | Redis ", "## Runs", "| 3 | ", "## Result", "- RTO (until writes were acknowledged again)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("record lacks %q", want)
		}
	}
	t.Logf("record:\n%s", md)
}

// checkSeries checks that a series of n runs adds up and logs its figures.
func checkSeries(t *testing.T, s *drill.Series, n int) {
	t.Helper()
	a := s.Aggregate
	t.Logf("%d runs: RTO p50 %.3fs p90 %.3fs max %.3fs; %d of %d acknowledged writes lost", a.Runs, a.RTOP50, a.RTOP90, a.RTOMax, a.Lost, a.Acked)
	if len(s.Runs) != n || a.Runs != n || a.Recovered != n || s.Stopped != "" {
		t.Fatalf("want %d recovered runs: %d runs, aggregate %+v, stopped %q", n, len(s.Runs), a, s.Stopped)
	}
	lost, acked, maxRTO := 0, 0, 0.0
	for i, r := range s.Runs {
		t.Logf("run %d: %s -> %s: down %+.3fs decided %+.3fs routed %+.3fs RTO %.3fs; %d acknowledged, %d lost",
			r.Index, r.OldTarget, r.NewTarget, r.DownAt, r.DecidedAt, r.RoutedAt, r.RTO, r.Acked, r.Lost)
		if r.Index != i+1 || !r.Recovered || r.RTO <= 0 || r.Acked == 0 || r.Found+r.Lost != r.Acked {
			t.Errorf("run %d: %+v", i+1, r)
		}
		if i > 0 && !r.Started.After(s.Runs[i-1].Started) {
			t.Errorf("run %d started at %v, before run %d (%v)", i+1, r.Started, i, s.Runs[i-1].Started)
		}
		lost, acked, maxRTO = lost+r.Lost, acked+r.Acked, max(maxRTO, r.RTO)
	}
	if a.Lost != lost || a.Acked != acked || a.RTOMax != maxRTO || !(0 < a.RTOP50 && a.RTOP50 <= a.RTOP90 && a.RTOP90 <= a.RTOMax) {
		t.Errorf("aggregate %+v does not match the runs (lost %d, acknowledged %d, max RTO %.3f)", a, lost, acked, maxRTO)
	}
}

// failAndRejoin is a drill's fail command for a Redis pair behind a proxy
// alone: it kills the server of the backend the proxy targets (named in
// the drill's environment), promotes the other, and starts the old one
// again as its replica, with a pidfile in the directory $1; the backends'
// addresses follow. Every run it appends its QP_DRILL_ variables to $1/runs.
const failAndRejoin = `#!/bin/sh
set -eu
dir=$1
shift
echo "$QP_DRILL_RUN $QP_DRILL_SERVICE $QP_DRILL_TARGET $QP_DRILL_TARGET_ADDRESS" >> "$dir/runs"
old=${QP_DRILL_TARGET_ADDRESS##*:}
new=
for a in "$@"; do
	if [ "$a" != "$QP_DRILL_TARGET_ADDRESS" ]; then new=${a##*:}; fi
done
cli() { redis-cli -h 127.0.0.1 --no-auth-warning -p "$@"; }
pid=$(cli "$old" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
kill -KILL "$pid"
n=0
while cli "$old" PING >/dev/null 2>&1; do
	n=$((n + 1))
	[ $n -lt 100 ] || { echo "$old still answers" >&2; exit 1; }
	sleep 0.05
done
[ "$(cli "$new" REPLICAOF NO ONE)" = OK ]
redis-server --port "$old" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --daemonize yes \
	--pidfile "$dir/redis-$old.pid" --logfile "$dir/redis-$old.log" --protected-mode no \
	--requirepass "$REDISCLI_AUTH" --masterauth "$REDISCLI_AUTH" --replicaof 127.0.0.1 "$new" \
	--repl-diskless-sync yes --repl-diskless-sync-delay 0
`

// waitStreaming writes a key on primary and waits until replica has it.
func waitStreaming(t *testing.T, primary, replica *testenv.Redis) {
	t.Helper()
	ctx := context.Background()
	key := "quorumproxy:test:streaming"
	if err := primary.Client().Set(ctx, key, "1", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the replica streaming from the primary", 10*time.Second, func() bool {
		n, err := replica.Client().Exists(ctx, key).Result()
		return err == nil && n == 1
	})
}

// Three drills in a row through a proxy alone, failing the primary with
// one fail command that finds the current primary in its environment:
// each run kills the server the proxy targets and the other takes over,
// the killed one rejoining as its replica before the next run. The runs
// go back and forth, each accounts for its writes, and the aggregate adds
// up.
func TestDrillRepeatFailCommand(t *testing.T) {
	testenv.Need(t, "redis")
	r1 := testenv.MustRedis(t, testenv.RedisOptions{})
	r2 := testenv.MustReplica(t, r1)
	t.Setenv("QP_TEST_REDIS_PASSWORD", r1.Password())
	t.Setenv("REDISCLI_AUTH", r1.Password())
	// A replica that has just loaded its full sync streams nothing until
	// it first acknowledges (within a second): a failover before then
	// loses every write since, which is Redis's, not the proxy's.
	waitStreaming(t, r1, r2)
	dir := t.TempDir()
	// The servers the fail command started again are the test's to stop.
	t.Cleanup(func() {
		pids, _ := filepath.Glob(filepath.Join(dir, "redis-*.pid"))
		for _, f := range pids {
			if b, err := os.ReadFile(f); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	script := filepath.Join(dir, "fail.sh")
	if err := os.WriteFile(script, []byte(failAndRejoin), 0o755); err != nil {
		t.Fatal(err)
	}
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "qp.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(redisConfig, admin, listen, r1.Addr(), r2.Addr())), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath, admin)
	testwait.For(t, "target r1", 30*time.Second, func() bool {
		s := d.service(t, "cache")
		return s != nil && s.Target == "r1"
	})
	record := filepath.Join(dir, "drill.md")
	var out, errb bytes.Buffer
	code := run([]string{"drill", "-config", cfgPath, "-service", "cache", "-repeat", "3", "-settle", "30s",
		"-warmup", "500ms", "-after", "500ms", "-timeout", "20s", "-report", record, "-json",
		"--", script, dir, r1.Addr(), r2.Addr()}, &out, &errb)
	if code != 0 {
		t.Fatalf("drill exit %d:\n%s\n%s", code, errb.String(), out.String())
	}
	var s drill.Series
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("series: %v\n%s", err, out.String())
	}
	checkSeries(t, &s, 3)
	runs, err := os.ReadFile(filepath.Join(dir, "runs"))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("1 cache r1 %[1]s\n2 cache r2 %[2]s\n3 cache r1 %[1]s\n", r1.Addr(), r2.Addr())
	if string(runs) != want {
		t.Errorf("the fail command's environment, run by run:\n%s\nwant\n%s", runs, want)
	}
	for i, r := range s.Runs {
		from, to := "r1", "r2"
		if i == 1 {
			from, to = to, from
		}
		if r.OldTarget != from || r.NewTarget != to {
			t.Errorf("run %d: %s -> %s, want %s -> %s", i+1, r.OldTarget, r.NewTarget, from, to)
		}
	}
	md, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| Failure | fail command `" + script, "- No cluster: the proxy decides alone", "## Runs", "| 3 | ", "## Result"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("record lacks %q:\n%s", want, md)
		}
	}
}
