package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

func TestMain(m *testing.M) {
	// quorumproxy runs this test binary as the promote hook, as it runs
	// the demo binary in `make demo`.
	if len(os.Args) > 1 {
		if h, ok := hooks[os.Args[1]]; ok {
			os.Exit(runHook(h, os.Stdout, os.Stderr))
		}
	}
	goleak.VerifyTestMain(m)
}

// tlog sends timeline lines to the test log.
type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The configs the demo writes must pass the real config parser, with no
// warnings, and mean what the demo says.
func TestRenderedConfigParses(t *testing.T) {
	conf := renderConfig("127.0.0.1:17654",
		serviceConf{
			Name: "pg", Listen: "127.0.0.1:15432", Kind: "postgres", Role: "primary",
			Interval: 200 * time.Millisecond, Timeout: 150 * time.Millisecond, Rise: 2, Fall: 2,
			User: "qp", Database: "postgres", PasswordEnv: envPGPassword, SwitchHold: 5 * time.Second,
			Promote: []string{"/path with space/demo", "hook-pg-promote"}, HookTimeout: 30 * time.Second,
			Backends: []backendConf{{"p1", "127.0.0.1:5001", 100}, {"p2", "127.0.0.1:5002", 50}},
		},
		serviceConf{
			Name: "redis", Listen: "127.0.0.1:16379", Kind: "redis",
			Interval: 200 * time.Millisecond, Timeout: 150 * time.Millisecond, Rise: 2, Fall: 2,
			Backends: []backendConf{{"r1", "127.0.0.1:6001", 100}, {"r2", "127.0.0.1:6002", 50}},
		})
	cfg, warnings, err := config.Parse("demo.toml", []byte(conf))
	if err != nil {
		t.Fatalf("config.Parse: %v\n%s", err, conf)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	if len(cfg.Services) != 2 {
		t.Fatalf("%d services, want 2", len(cfg.Services))
	}
	pg := cfg.Services[0]
	if pg.Role != config.RolePrimary || pg.Health.Kind != config.KindPostgres || pg.Health.Interval != 200*time.Millisecond ||
		pg.Health.Fall != 2 || pg.Failback != config.FailbackManual || pg.SwitchHold != 5*time.Second ||
		pg.Health.PasswordEnv != envPGPassword {
		t.Errorf("pg service decoded as %+v", pg)
	}
	if got := strings.Join(pg.Hooks.Promote, "|"); got != "/path with space/demo|hook-pg-promote" {
		t.Errorf("promote hook %q", got)
	}
	if pg.Backends[0].Priority != 100 || pg.Backends[1].Address != "127.0.0.1:5002" {
		t.Errorf("backends %+v", pg.Backends)
	}
	if cfg.Admin.Listen != "127.0.0.1:17654" || cfg.Cluster != nil {
		t.Errorf("admin %+v cluster %+v", cfg.Admin, cfg.Cluster)
	}
}

// runHookProcess runs this test binary as quorumproxy would run the hook.
func runHookProcess(t *testing.T, name, addr string, env ...string) (events []string, out string, err error) {
	t.Helper()
	self, xerr := os.Executable()
	if xerr != nil {
		t.Fatal(xerr)
	}
	evPath := filepath.Join(t.TempDir(), "events")
	cmd := exec.Command(self, name)
	cmd.Env = append(os.Environ(), append(env, "QP_NEW_ADDRESS="+addr, "QP_NEW_BACKEND=b2", envEvents+"="+evPath)...)
	b, err := cmd.CombinedOutput()
	data, _ := os.ReadFile(evPath)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) >= 2 {
			events = append(events, f[1])
		}
	}
	return events, string(b), err
}

func TestRedisPromoteHook(t *testing.T) {
	testenv.Need(t, "redis", "redis-cli")
	r1 := testenv.MustRedis(t, testenv.RedisOptions{})
	r2 := testenv.MustReplica(t, r1)
	events, out, err := runHookProcess(t, "hook-redis-promote", r2.Addr())
	if err != nil {
		t.Fatalf("hook: %v\n%s", err, out)
	}
	if strings.Join(events, ",") != "start,ok" {
		t.Errorf("events %v, want start,ok", events)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := r2.Client()
	role, err := c.Do(ctx, "ROLE").Slice()
	if err != nil {
		t.Fatal(err)
	}
	if len(role) == 0 || role[0] != "master" {
		t.Errorf("replica after the hook: ROLE %v, want master", role)
	}
	// A hook that cannot reach its target fails and says so.
	events, _, err = runHookProcess(t, "hook-redis-promote", r1.Addr()[:strings.LastIndex(r1.Addr(), ":")]+":1")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || strings.Join(events, ",") != "start,fail" {
		t.Errorf("hook against a closed port: err %v events %v, want exit error and start,fail", err, events)
	}
}

func TestPostgresPromoteHook(t *testing.T) {
	testenv.Need(t, "postgres")
	p1 := testenv.MustPostgres(t, testenv.PGOptions{})
	p2 := testenv.MustStandby(t, p1, false)
	events, out, err := runHookProcess(t, "hook-pg-promote", p2.Addr(), envPGUser+"="+testenv.User, envPGPassword+"="+p2.Password())
	if err != nil {
		t.Fatalf("hook: %v\n%s", err, out)
	}
	if strings.Join(events, ",") != "start,ok" {
		t.Errorf("events %v, want start,ok", events)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inRecovery, err := p2.InRecovery(ctx)
	if err != nil || inRecovery {
		t.Errorf("standby after the hook: in recovery %v (err %v), want promoted", inRecovery, err)
	}
}

// buildProxy builds the quorumproxy command with the race detector into a
// temp dir (a race in the proxy then fails the test through its exit
// status), or returns $QP_QUORUMPROXY_BIN when set (a binary built already).
func buildProxy(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("QP_QUORUMPROXY_BIN"); bin != "" {
		return bin
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "quorumproxy")
	cmd := exec.Command(goTool, "build", "-race", "-o", bin, "github.com/quorumproxy/quorumproxy/cmd/quorumproxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building quorumproxy: %v\n%s", err, out)
	}
	return bin
}

// TestRedisPartEndToEnd is `make demo` part 1, shortened: the real binary,
// real Redis, the demo's own hook, SIGKILL, and the figures it reports.
func TestRedisPartEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the end-to-end demo in -short mode")
	}
	testenv.Need(t, "redis", "redis-cli", "redis-benchmark")
	bin := buildProxy(t)
	d, err := newDemo(bin, tlog{t})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := d.redisPart(ctx, redisOptions{
		BenchRequests: 2000, Before: 500 * time.Millisecond, After: 500 * time.Millisecond, FailoverLimit: 30 * time.Second,
		// Slower than the demo's: `make test` shares two cores with the rest of the suite.
		Health: healthOptions{Interval: 400 * time.Millisecond, Timeout: 350 * time.Millisecond, Fall: 3},
	})
	if err != nil {
		t.Fatalf("part 1: %v", err)
	}
	d.tl.report(r)
	if r.NewTarget != "r2" {
		t.Errorf("new target %q, want r2", r.NewTarget)
	}
	if r.Detected.IsZero() || r.TargetMoved.IsZero() {
		t.Errorf("detection %v / target move %v not seen", r.Detected, r.TargetMoved)
	}
	if r.HookStarted.IsZero() || !r.HookOK {
		t.Errorf("promote hook: started %v ok %v", r.HookStarted, r.HookOK)
	}
	if r.RTO() <= 0 || r.AckedAfterKill == 0 {
		t.Errorf("RTO %v, %d writes acknowledged after the kill", r.RTO(), r.AckedAfterKill)
	}
	if r.ReadBack+r.Lost != r.Acked || r.LostAfterKill != 0 {
		t.Errorf("read back %d + lost %d != acknowledged %d, or lost after the kill %d", r.ReadBack, r.Lost, r.Acked, r.LostAfterKill)
	}
	t.Logf("RTO %.3fs, lost %d of %d acknowledged writes", r.RTO().Seconds(), r.Lost, r.Acked)
}
