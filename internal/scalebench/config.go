package main

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// node is one proxy of the cluster: its name, where its admin API and its
// gossip listen, its state directory and config file, and one listen
// address per service.
type node struct {
	name     string
	admin    string
	gossip   string
	stateDir string
	cfgPath  string
	logPath  string
	listen   []string // listen[i] is service i's address on this proxy
}

// clusterSpec is everything the configs of one cluster are made from.
type clusterSpec struct {
	services  int
	interval  time.Duration // health check interval; every other timing is the default
	logLevel  string        // [log] level; "" for the default
	keyFile   string
	tokenFile string
	backendA  string // every service's primary (priority 1)
	backendB  string // every service's standby (priority 0)
	nodes     []node
}

// serviceName is the name of service i (0-based).
func serviceName(i int) string { return "s" + strconv.Itoa(i+1) }

// newSpec lays out a cluster of proxies nodes with services services in
// dir: names qp1..qpN, a free loopback port for every admin API, gossip
// address and service listener (testenv.FreePort: below the ephemeral
// range, free for TCP and UDP, never handed out twice).
func newSpec(dir string, proxies, services int, interval time.Duration, backendA, backendB string) (*clusterSpec, error) {
	if proxies < 1 || services < 1 {
		return nil, fmt.Errorf("need at least one proxy and one service (got %d, %d)", proxies, services)
	}
	s := &clusterSpec{
		services: services, interval: interval,
		keyFile: filepath.Join(dir, "gossip.key"), tokenFile: filepath.Join(dir, "token"),
		backendA: backendA, backendB: backendB,
	}
	addr := func() (string, error) {
		p, err := testenv.FreePort()
		if err != nil {
			return "", err
		}
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
	}
	var err error
	for i := range proxies {
		n := node{name: "qp" + strconv.Itoa(i+1)}
		n.stateDir = filepath.Join(dir, n.name+".state")
		n.cfgPath = filepath.Join(dir, n.name+".toml")
		n.logPath = filepath.Join(dir, n.name+".log")
		if n.admin, err = addr(); err != nil {
			return nil, err
		}
		if n.gossip, err = addr(); err != nil {
			return nil, err
		}
		n.listen = make([]string, services)
		for j := range n.listen {
			if n.listen[j], err = addr(); err != nil {
				return nil, err
			}
		}
		s.nodes = append(s.nodes, n)
	}
	return s, nil
}

// config is proxy i's configuration file. Services are written with inline
// tables, the most compact form the decoder takes: a config file is at most
// config.MaxFileSize (256 KiB), and 1,000 services in the long form of
// testdata/example.toml would not fit.
func (s *clusterSpec) config(i int) string {
	n := s.nodes[i]
	var b strings.Builder
	fmt.Fprintf(&b, "[admin]\nlisten = %q\ntoken_file = %q\n\n", n.admin, s.tokenFile)
	if s.logLevel != "" {
		fmt.Fprintf(&b, "[log]\nlevel = %q\n\n", s.logLevel)
	}
	fmt.Fprintf(&b, "[cluster]\nnode_name = %q\nsecret_key_file = %q\nstate_dir = %q\n", n.name, s.keyFile, n.stateDir)
	for _, p := range s.nodes {
		fmt.Fprintf(&b, "\n[[cluster.peer]]\nname = %q\naddress = %q\n", p.name, p.gossip)
	}
	health := fmt.Sprintf(`{kind="tcp",interval=%q}`, s.interval)
	backends := fmt.Sprintf(`[{name="a",address=%q,priority=1},{name="b",address=%q}]`, s.backendA, s.backendB)
	for j := range s.services {
		fmt.Fprintf(&b, "\n[[service]]\nname=%q\nlisten=%q\nhealth=%s\nbackend=%s\n", serviceName(j), n.listen[j], health, backends)
	}
	return b.String()
}

// validate parses every proxy's config with the config package, as `run`
// would, and checks what the benchmark relies on. It returns the timings
// the proxies will run with, as the config package filled them in, for the
// report.
func (s *clusterSpec) validate() (string, error) {
	var timings string
	for i, n := range s.nodes {
		text := s.config(i)
		if len(text) > config.MaxFileSize {
			return "", fmt.Errorf("%s: config is %d bytes for %d services, above the %d a config may be: use fewer services",
				n.name, len(text), s.services, config.MaxFileSize)
		}
		cfg, _, err := config.Parse(n.cfgPath, []byte(text))
		if err != nil {
			return "", fmt.Errorf("%s: generated config: %w", n.name, err)
		}
		if len(cfg.Services) != s.services {
			return "", fmt.Errorf("%s: config has %d services, want %d", n.name, len(cfg.Services), s.services)
		}
		if cfg.Cluster == nil || len(cfg.Cluster.Peers) != len(s.nodes) {
			return "", errors.New(n.name + ": config has no cluster of every proxy")
		}
		h := cfg.Services[0].Health
		timings = fmt.Sprintf("interval %v, timeout %v, fall %d, rise %d, fast_interval %v, lease_timeout %v",
			h.Interval, h.Timeout, h.Fall, h.Rise, h.FastInterval, cfg.Cluster.LeaseTimeout)
	}
	return timings, nil
}
