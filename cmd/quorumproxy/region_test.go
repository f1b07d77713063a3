package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

const regionConfig = `
[admin]
listen = %q

[[service]]
name = "cache"
listen = %q
role = "primary"
region_order = ["us"]

  [service.health]
  kind = "redis"
  password_env = "QP_TEST_REDIS_PASSWORD"
  interval = "400ms"
  timeout = "350ms"
  rise = 1
  fall = 2

  [[service.backend]]
  name = "r1"
  address = %q
  priority = 10
  region = "eu"

  [[service.backend]]
  name = "r2"
  address = %q
  priority = 9
  region = "us"

  [[service.backend]]
  name = "r3"
  address = %q
  priority = 1
  region = "eu"
`

// Regions: a failover prefers the standby in the failed primary's region
// over a higher-priority one elsewhere; status and metrics carry the
// labels. A standby promoted elsewhere than the one chosen is followed.
func TestFailoverPrefersTheRegion(t *testing.T) {
	testenv.Need(t, "redis")
	r1 := testenv.MustRedis(t, testenv.RedisOptions{})
	r2, r3 := testenv.MustReplica(t, r1), testenv.MustReplica(t, r1)
	waitStreaming(t, r1, r2)
	waitStreaming(t, r1, r3)
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "qp.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(regionConfig, admin, listen, r1.Addr(), r2.Addr(), r3.Addr())), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QP_TEST_REDIS_PASSWORD", r1.Password())
	d := startDaemon(t, cfgPath, admin)
	testwait.For(t, "target r1", 20*time.Second, func() bool {
		s := d.service(t, "cache")
		return s != nil && s.Target == "r1"
	})
	if s := d.service(t, "cache"); s.Backends[1].Region != "us" {
		t.Errorf("status: backend r2's region %q, want us", s.Backends[1].Region)
	}
	if m := getBody(t, "http://"+admin+"/metrics"); !strings.Contains(m, `quorumproxy_backend_info{address="`+r3.Addr()+`",backend="r3",region="eu",service="cache"} 1`) {
		t.Errorf("/metrics lacks r3's info:\n%s", grepLines(m, "backend_info"))
	}
	if err := r1.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "a failover", 20*time.Second, func() bool {
		s := d.service(t, "cache")
		return s != nil && s.Target != "r1" && s.Target != ""
	})
	if s := d.service(t, "cache"); s.Target != "r3" {
		t.Fatalf("failover to %q (%s), want r3, in the failed primary's region", s.Target, s.Why)
	}
	// No promote hook here: something else promotes, and chooses r2 (as
	// Patroni in front of which the proxy runs might). The proxy follows
	// the one primary rather than wait for r3 for ever.
	if err := r2.Promote(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the proxy following r2, promoted elsewhere", 20*time.Second, func() bool {
		s := d.service(t, "cache")
		return s != nil && s.Target == "r2"
	})
}
