package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// Part 3's configs, one per proxy, pass the real parser with no warnings,
// name the same three peers and differ where they must.
func TestClusterConfigParses(t *testing.T) {
	peers := []peerConf{{"qp1", "127.0.0.1:7001"}, {"qp2", "127.0.0.1:7002"}, {"qp3", "127.0.0.1:7003"}}
	o := defaultClusterOptions()
	var hashes []string
	for i, p := range peers {
		conf := renderClusterConfig("127.0.0.1:1909"+string(rune('0'+i)), clusterConf{
			Node: p.Name, Bind: p.Address, SecretKeyFile: "/key dir/gossip.key", StateDir: filepath.Join("/state", p.Name),
			LeaseTimeout: o.LeaseTimeout, SwitchHold: o.SwitchHold, Peers: peers,
		}, clusterServiceConf("127.0.0.1:15432", o, "/path with space/demo", "127.0.0.1:5001", "127.0.0.1:5002"))
		cfg, warnings, err := config.Parse(p.Name+".toml", []byte(conf))
		if err != nil {
			t.Fatalf("config.Parse: %v\n%s", err, conf)
		}
		if len(warnings) > 0 {
			t.Errorf("%s: warnings: %v", p.Name, warnings)
		}
		c := cfg.Cluster
		if c == nil {
			t.Fatalf("%s: no [cluster] table decoded\n%s", p.Name, conf)
		}
		if c.NodeName != p.Name || c.Bind != p.Address || c.StateDir != filepath.Join("/state", p.Name) ||
			c.SecretKeyFile != "/key dir/gossip.key" || c.LeaseTimeout != o.LeaseTimeout || c.SwitchHold != o.SwitchHold ||
			c.Insecure || c.Quorum() != 2 || len(c.Peers) != 3 || c.Peers[2].Name != "qp3" || c.Peers[2].Address != "127.0.0.1:7003" {
			t.Errorf("%s: cluster decoded as %+v", p.Name, c)
		}
		hashes = append(hashes, c.PeersHash())
		if len(cfg.Services) != 1 || cfg.Services[0].Role != config.RolePrimary || cfg.Services[0].Mode != config.ModeActivePassive ||
			len(cfg.Services[0].Hooks.Promote) != 2 || cfg.Services[0].Backends[1].Name != "p2" {
			t.Errorf("%s: services decoded as %+v", p.Name, cfg.Services)
		}
	}
	if hashes[0] != hashes[1] || hashes[1] != hashes[2] {
		t.Errorf("the three proxies disagree on the peer list: %v", hashes)
	}
}

// The hook's events carry the proxy and the epoch in a cluster.
func TestHookEventTag(t *testing.T) {
	m := hookTag.FindStringSubmatch("pg_promote() on p2 [proxy qp3, QP_EPOCH 12] (127.0.0.1:5432)")
	if m == nil || m[1] != "qp3" || m[2] != "12" {
		t.Errorf("tag parsed as %q", m)
	}
}

// TestClusterPartEndToEnd is `make demo` part 3, shortened: three real
// proxies (race-built), real PostgreSQL, the demo's hook, SIGKILL to the
// primary, then to two of the proxies.
func TestClusterPartEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the end-to-end demo in -short mode")
	}
	testenv.Need(t, "postgres")
	bin := buildProxy(t)
	d, err := newDemo(bin, tlog{t})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	o := defaultClusterOptions()
	o.Before, o.After = time.Second, 500*time.Millisecond
	// Slower than the demo's: `make test` shares two cores with the rest of the suite.
	o.Health = healthOptions{Interval: 400 * time.Millisecond, Timeout: 350 * time.Millisecond, Fall: 3}
	o.LeaseTimeout = 3 * time.Second
	r, err := d.clusterPart(ctx, o)
	if err != nil {
		t.Fatalf("part 3: %v", err)
	}
	d.tl.reportCluster(r)
	if r.NewTarget != "p2" || r.Epoch < 2 {
		t.Errorf("new target %q at epoch %d, want p2 at epoch >= 2", r.NewTarget, r.Epoch)
	}
	if r.HookRuns != 1 || r.HookProxy == "" || !r.HookOK {
		t.Errorf("promote hook for epoch %d: %d runs, on %q, ok %v; want exactly one good run", r.Epoch, r.HookRuns, r.HookProxy, r.HookOK)
	}
	if r.Committer != "" && r.Committer != r.HookProxy {
		t.Errorf("epoch %d committed by %s, hook ran on %s", r.Epoch, r.Committer, r.HookProxy)
	} else if r.Committer == "" {
		t.Logf("the commit of epoch %d was not seen by /status polling", r.Epoch)
	}
	if r.RTO() <= 0 || r.AckedAfterKill == 0 {
		t.Errorf("RTO %v, %d writes acknowledged after the kill", r.RTO(), r.AckedAfterKill)
	}
	if r.ReadBack+r.Lost != r.Acked || r.LostAfterKill != 0 {
		t.Errorf("read back %d + lost %d != acknowledged %d, or lost after the kill %d", r.ReadBack, r.Lost, r.Acked, r.LostAfterKill)
	}
	if r.LoneStop.IsZero() || r.Refused == nil || r.Closed == nil {
		t.Errorf("the lone proxy: stopped %v, new connection error %v, open session error %v", r.LoneStop, r.Refused, r.Closed)
	}
	t.Logf("RTO %.3fs, lost %d of %d acknowledged writes; lone proxy stopped %.3fs after losing its peers",
		r.RTO().Seconds(), r.Lost, r.Acked, r.LoneStop.Sub(r.ProxyKills).Seconds())
}
