package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// chainPrefix starts the name of the iptables chain each run makes; the
// benchmark's pid follows, so a later run can remove the chain of one that
// died without cleaning up.
const chainPrefix = "qpscale-"

// gossipMeter counts the bytes of gossip on loopback with iptables
// accounting rules (no target: they only count) in a chain of its own,
// jumped to from OUTPUT. Every loopback packet passes OUTPUT exactly once,
// so nothing is counted twice within one rule. For each proxy two rules
// (UDP, TCP) count the packets from or to its gossip port; two more count
// packets from or to any proxy's gossip port: the cluster's total.
//
// A TCP stream that proxy X opens to Y runs from an ephemeral port of X to
// Y's gossip port, so a proxy's own rules see the UDP it sends and
// receives, and the streams others open to it, both ways; the streams it
// opens count at the peer. The total has none of that ambiguity: every
// gossip byte once, as IP packets (headers included).
type gossipMeter struct {
	chain string
	ports []int // gossip port of each proxy, in order
}

// maxMultiport is the most ports one multiport match takes.
const maxMultiport = 15

// newGossipMeter installs the chain and its rules, after removing chains
// left by earlier runs that are gone.
func newGossipMeter(gossip []string) (*gossipMeter, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("iptables accounting needs root")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, err
	}
	if len(gossip) > maxMultiport {
		return nil, fmt.Errorf("%d proxies: one multiport rule takes at most %d ports", len(gossip), maxMultiport)
	}
	sweepChains()
	g := &gossipMeter{chain: chainPrefix + strconv.Itoa(os.Getpid())}
	var all []string
	for _, a := range gossip {
		_, ps, err := net.SplitHostPort(a)
		if err != nil {
			return nil, err
		}
		p, err := strconv.Atoi(ps)
		if err != nil {
			return nil, err
		}
		g.ports = append(g.ports, p)
		all = append(all, ps)
	}
	if err := ipt("-N", g.chain); err != nil {
		return nil, err
	}
	rules := [][]string{}
	for _, p := range g.ports {
		for _, proto := range []string{"udp", "tcp"} {
			rules = append(rules, []string{"-p", proto, "-m", "multiport", "--ports", strconv.Itoa(p)})
		}
	}
	for _, proto := range []string{"udp", "tcp"} {
		rules = append(rules, []string{"-p", proto, "-m", "multiport", "--ports", strings.Join(all, ",")})
	}
	for _, r := range rules {
		if err := ipt(append([]string{"-A", g.chain}, r...)...); err != nil {
			g.remove()
			return nil, err
		}
	}
	if err := ipt("-I", "OUTPUT", "-o", "lo", "-j", g.chain); err != nil {
		g.remove()
		return nil, err
	}
	return g, nil
}

// gossipBytes is one read of the counters: bytes at each proxy's port and
// the cluster's total.
type gossipBytes struct {
	perProxy []uint64
	total    uint64
}

// read reads the counters.
func (g *gossipMeter) read() (gossipBytes, error) {
	out, err := exec.Command("iptables", "-w", "-L", g.chain, "-n", "-v", "-x").CombinedOutput()
	if err != nil {
		return gossipBytes{}, fmt.Errorf("iptables -L %s: %w: %s", g.chain, err, out)
	}
	counts, err := parseCounters(string(out))
	if err != nil {
		return gossipBytes{}, err
	}
	if len(counts) != 2*len(g.ports)+2 {
		return gossipBytes{}, fmt.Errorf("iptables -L %s: %d rules, want %d", g.chain, len(counts), 2*len(g.ports)+2)
	}
	var b gossipBytes
	for i := range g.ports {
		b.perProxy = append(b.perProxy, counts[2*i]+counts[2*i+1])
	}
	b.total = counts[2*len(g.ports)] + counts[2*len(g.ports)+1]
	return b, nil
}

// parseCounters returns the bytes column of every rule, in order, from the
// output of `iptables -L CHAIN -n -v -x`: a "Chain" line, a header line
// starting with "pkts", then one line per rule starting with its packet
// and byte counts.
func parseCounters(out string) ([]uint64, error) {
	var counts []uint64
	header := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "Chain" {
			continue
		}
		if f[0] == "pkts" {
			header = true
			continue
		}
		if !header || len(f) < 2 {
			return nil, fmt.Errorf("iptables: unexpected line %q", line)
		}
		if _, err := strconv.ParseUint(f[0], 10, 64); err != nil {
			return nil, fmt.Errorf("iptables: packets in %q: %w", line, err)
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("iptables: bytes in %q: %w", line, err)
		}
		counts = append(counts, n)
	}
	if !header {
		return nil, errors.New("iptables: no header line")
	}
	return counts, nil
}

// remove deletes the jump and the chain; errors are reported, not fatal.
func (g *gossipMeter) remove() {
	removeChain(g.chain)
}

func removeChain(chain string) {
	// The jump may be missing (setup failed before it): ignore that error.
	_ = ipt("-D", "OUTPUT", "-o", "lo", "-j", chain)
	if err := ipt("-F", chain); err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
	}
	if err := ipt("-X", chain); err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
	}
}

// sweepChains removes chains of earlier runs whose process is gone.
func sweepChains() {
	out, err := exec.Command("iptables", "-w", "-S").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, ok := strings.CutPrefix(line, "-N "+chainPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(name))
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue
		}
		removeChain(chainPrefix + strconv.Itoa(pid))
	}
}

func ipt(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
