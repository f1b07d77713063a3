package repoint

import (
	"context"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// No goroutine of a one-shot client outlives its call.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseReplication(t *testing.T) {
	r, err := ParseReplication("# Replication\r\nrole:slave\r\nmaster_host:10.0.0.5\r\nmaster_port:6380\r\nmaster_link_status:up\r\n")
	if err != nil || r.Role != "slave" || r.MasterHost != "10.0.0.5" || r.MasterPort != 6380 || !r.LinkUp {
		t.Fatalf("replica: %+v, %v", r, err)
	}
	if !r.Follows("10.0.0.5:6380") || r.Follows("10.0.0.5:6379") || r.Follows("10.0.0.6:6380") {
		t.Errorf("%+v follows the wrong primaries", r)
	}
	if r.String() != "replica of 10.0.0.5:6380 (link up)" {
		t.Errorf("String: %q", r.String())
	}
	p, err := ParseReplication("role:master\r\nconnected_slaves:0\r\n")
	if err != nil || p.Role != "master" || p.Follows("10.0.0.5:6380") || p.String() != "primary" {
		t.Fatalf("primary: %+v, %v", p, err)
	}
	if _, err := ParseReplication("role:sentinel\r\n"); err == nil {
		t.Error("a sentinel's INFO parsed")
	}
	// A host name and the address it resolves to are the same primary.
	l := Replication{Role: "slave", MasterHost: "127.0.0.1", MasterPort: 6380}
	if !l.Follows("localhost:6380") {
		t.Error("a replica of 127.0.0.1 does not follow localhost")
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 9: 256 * time.Second, 10: 5 * time.Minute, 100: 5 * time.Minute} {
		if got := Backoff(n); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, want)
		}
	}
}

// REPLICAOF goes with the check's login, TLS included: a server whose
// certificate the CA did not sign, or a wrong password, gets nothing done.
func TestReplicaOfWithTheChecksLogin(t *testing.T) {
	testenv.Need(t, "redis")
	ca, err := testenv.NewCA("repoint")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("redis", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	p := testenv.MustRedis(t, testenv.RedisOptions{Password: "pw", TLS: cert})
	x := testenv.MustRedis(t, testenv.RedisOptions{Password: "pw", TLS: cert})
	other, err := testenv.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	spec := health.Spec{Kind: "redis", Password: "pw", TLS: true, TLSCA: other.CertPEM, Timeout: 2 * time.Second}
	if err := (Redis{Spec: spec}).ReplicaOf(ctx, x.TLSAddr(), p.Addr()); err == nil {
		t.Fatal("REPLICAOF through a certificate the CA did not sign: no error")
	}
	spec.TLSCA, spec.Password = ca.CertPEM, "wrong"
	if err := (Redis{Spec: spec}).ReplicaOf(ctx, x.TLSAddr(), p.Addr()); err == nil {
		t.Fatal("REPLICAOF with a wrong password: no error")
	}
	spec.Password = "pw"
	login := Redis{Spec: spec}
	if r, err := login.Replication(ctx, x.TLSAddr()); err != nil || r.Role != "master" {
		t.Fatalf("x before: %+v, %v; want a primary still", r, err)
	}
	if err := login.ReplicaOf(ctx, x.TLSAddr(), p.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := login.ReplicaOf(ctx, x.TLSAddr(), p.Addr()); err != nil {
		t.Fatalf("REPLICAOF again: %v (want OK: it is idempotent)", err)
	}
	testwait.ForState(t, 20*time.Second, func() (bool, string) {
		r, err := login.Replication(ctx, x.TLSAddr())
		return err == nil && r.Follows(p.Addr()) && r.LinkUp, r.String() + " want a replica of port " + strconv.Itoa(p.Port())
	})
}
