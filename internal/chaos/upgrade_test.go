package chaos

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// olderBuild is a quorumproxy from the git history that speaks one wire
// format and advertises no range: the builds a cluster is upgraded from.
type olderBuild struct {
	name   string
	format int // the one wire format it speaks
	// It is the parent of the nth commit (0: the first) that added or
	// removed marker in cluster/codec.go, and its codec.go says says.
	marker string
	nth    int
	says   string
}

// newFormat is this build's highest wire format.
const newFormat = 6

var olderBuilds = []olderBuild{
	// The last build of format 5: the parent of the commit that
	// introduced format 6.
	{name: "format5", format: 5, marker: "const wireVersion = 6", nth: 0, says: "const wireVersion = 5"},
	// The last build of format 6 without the negotiation: the parent of
	// the commit that replaced the one constant by a range.
	{name: "format6", format: 6, marker: "const wireVersion = 6", nth: 1, says: "const wireVersion = 6"},
}

// build builds b from the git history: a real older binary, not this
// build told to pretend. It skips when the history is not there (a source
// tarball, a shallow clone).
func (b olderBuild) build(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("older proxies are built from the git history, and this is not a git checkout: %v", err)
	}
	root := strings.TrimSpace(string(out))
	out, err = exec.Command("git", "-C", root, "log", "--reverse", "--format=%H", "-S", b.marker, "--", "cluster/codec.go").Output()
	commits := strings.Fields(string(out))
	if err != nil || len(commits) <= b.nth {
		t.Skipf("commit %d that changed %q is not in this clone's history (shallow?): %v", b.nth+1, b.marker, err)
	}
	intro := commits[b.nth]
	old := intro + "^"
	if err := exec.Command("git", "-C", root, "cat-file", "-e", old+"^{commit}").Run(); err != nil {
		t.Skipf("the parent of %.12s (the last build of %s) is not in this clone's history (shallow?)", intro, b.name)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	unpack := exec.Command("sh", "-c", `git -C "$0" archive "$1" | tar -x -C "$2"`, root, old, src)
	if out, err := unpack.CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", old, err, out)
	}
	codec, err := os.ReadFile(filepath.Join(src, "cluster", "codec.go"))
	if err != nil || !bytes.Contains(codec, []byte(b.says)) {
		t.Fatalf("%s's cluster/codec.go does not say %q (%v): the history moved, update olderBuilds", old, b.says, err)
	}
	bin := filepath.Join(dir, "quorumproxy-"+b.name)
	build := exec.Command("go", "build", "-o", bin, "./cmd/quorumproxy")
	build.Dir = src
	t0 := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", old, err, out)
	}
	t.Logf("built the last quorumproxy of %s (%.12s^, the parent of %.12s) in %s", b.name, intro, intro, time.Since(t0).Round(time.Second))
	return bin
}

// restartAs stops p (SIGTERM, as a service manager would) and starts it
// again as binary bin ("": this build) on the same config and state_dir.
func (p *proxyNode) restartAs(bin string) {
	t := p.c.t
	t.Helper()
	p.proc.signal(syscall.SIGTERM)
	select {
	case <-p.proc.exited:
	case <-time.After(20 * time.Second):
		t.Logf("%s did not stop within 20s of SIGTERM: killed", p.name)
		p.proc.kill()
	}
	t.Logf("%s log as the older build (tail):\n%s", p.name, tail(p.proc.logs.String(), 8))
	p.bin = bin
	p.start()
}

// failoverAndBack kills the primary "a" under the split-brain monitor, waits
// until every proxy routes and forwards to "b", checks that the promote
// hook ran once for the new epoch, and brings "a" back as primary.
func (c *cluster) failoverAndBack(what string) time.Duration {
	t := c.t
	t.Helper()
	before := len(c.promotions())
	e0 := c.proxies[0].view().epoch
	m := c.startMonitor()
	t0 := time.Now()
	c.backends["a"].kill()
	c.waitAllRoute("b", c.proxies, 60*time.Second)
	d := time.Since(t0)
	m.finish(t, what)
	e1 := c.proxies[0].view().epoch
	if e1 <= e0 {
		t.Fatalf("%s: epoch did not grow: %d then %d", what, e0, e1)
	}
	want := fmt.Sprintf("%d b", e1)
	testwait.For(t, what+": the promote hook once, for "+want, 20*time.Second, func() bool {
		p := c.promotions()
		return len(p) == before+1 && slices.Contains(p, want)
	})
	// Back to "a" through an upgraded proxy (a switchover voted by both
	// builds), so that the next stage starts where this one did.
	c.restorePrimary(c.proxies)
	return d
}

// A rolling upgrade, one proxy at a time: three proxies of an older build
// (from the git history: the last of format 5, and the last of format 6
// before the negotiation) are replaced by this build one by one, and the
// primary is killed with one, two and three proxies upgraded. Every time
// every proxy routes and forwards to the new primary, no two proxies
// route to different backends at any sampled moment, each epoch has one
// primary, and the promote hook runs once.
func TestRollingUpgradeAcrossWireFormats(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	for _, b := range olderBuilds {
		t.Run("from_"+b.name, func(t *testing.T) { rollingUpgrade(t, b) })
	}
}

func rollingUpgrade(t *testing.T, b olderBuild) {
	o := defaultOpts()
	o.bin = b.build(t)
	c := newCluster(t, o) // all three of the older build, routing "a"
	p1, p2, p3 := c.proxies[0], c.proxies[1], c.proxies[2]

	p1.restartAs("")
	c.waitAllRoute("a", c.proxies, 60*time.Second)
	d1 := c.failoverAndBack("failover with p1 upgraded, p2 and p3 of " + b.name)

	p2.restartAs("")
	c.waitAllRoute("a", c.proxies, 60*time.Second)
	d2 := c.failoverAndBack("failover with p1 and p2 upgraded, p3 of " + b.name)

	// The upgraded proxies talk format 6 to each other and p3's format to
	// p3, and never found a peer they could not talk to.
	for _, p := range []*proxyNode{p1, p2} {
		logs := p.proc.logs.String()
		line := fmt.Sprintf("peer p3 speaks wire format %d: it is sent format %d until it is upgraded", b.format, b.format)
		if b.format < newFormat && !strings.Contains(logs, line) {
			t.Errorf("%s never said %q:\n%s", p.name, line, tail(logs, 40))
		}
		if strings.Contains(logs, "its messages are dropped") {
			t.Errorf("%s found a peer of no common format:\n%s", p.name, tail(logs, 40))
		}
		st, err := p.status()
		if err != nil {
			t.Fatal(err)
		}
		if n := st.Cluster.Counters.WireVersion; n != 0 {
			t.Errorf("%s dropped %d payloads for their wire format", p.name, n)
		}
		// /status shows what each peer speaks and is sent.
		want := map[string]string{"p1": "5..6 6", "p2": "5..6 6", "p3": fmt.Sprintf("%d %d", b.format, b.format)}
		for _, mb := range st.Cluster.Members {
			if got := fmt.Sprintf("%s %d", mb.WireFormats, mb.WireFormat); got != want[mb.Name] {
				t.Errorf("%s's /status shows %s with wire formats %q, want %q", p.name, mb.Name, got, want[mb.Name])
			}
		}
	}

	p3.restartAs("")
	c.waitAllRoute("a", c.proxies, 60*time.Second)
	testwait.For(t, "p1 seeing the upgraded p3's range", 30*time.Second, func() bool {
		return strings.Contains(p1.proc.logs.String(), "peer p3 speaks wire formats 5..6: it is sent format 6")
	})
	d3 := c.failoverAndBack("failover with all three upgraded")
	t.Logf("FIGURE rolling upgrade from %s, kill primary -> all 3 route and forward to b: %s with 1 of 3 proxies upgraded, %s with 2 of 3, %s with 3 of 3",
		b.name, d1.Round(time.Millisecond), d2.Round(time.Millisecond), d3.Round(time.Millisecond))
}
