package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster/internal/mesh"
)

// Peer is one configured proxy of the cluster and its gossip address.
type Peer struct {
	Name    string
	Address string
}

// GossipConfig configures the memberlist transport of a Runtime. As in
// Config, nothing has a default here: package config owns them.
type GossipConfig struct {
	// Bind is the ip:port gossip listens on; required.
	Bind string
	// Advertise is the ip:port the others reach this proxy at; required
	// (normally its address in Peers, where the others send).
	Advertise string
	// Label separates clusters on one network.
	Label string
	// Peers lists every proxy, this one included.
	Peers []Peer
	// SecretKeyFile holds the gossip key (16, 24 or 32 bytes, raw or
	// base64); required unless Insecure.
	SecretKeyFile string
	Insecure      bool
	// ConfigHash identifies the peer list and the services' backends:
	// proxies configured differently ignore each other's messages.
	ConfigHash string
	// GossipInterval, ProbeInterval and RejoinInterval are the gossip's
	// timers; required.
	GossipInterval, ProbeInterval, RejoinInterval time.Duration
	// WAN: proxies spread over regions (memberlist's WAN suspicion).
	WAN    bool
	Logger *slog.Logger
}

// Runtime is a running cluster member: the state store, the Node that runs
// the protocol and the gossip transport it talks through.
type Runtime struct {
	*Node
	store *FileStore
	mesh  *mesh.Mesh
}

// Member is a configured peer as the gossip layer sees it.
type Member struct {
	Name     string    `json:"name"`
	Address  string    `json:"address"`
	State    string    `json:"state"` // alive, suspect, dead, unknown
	LastSeen time.Time `json:"last_seen"`
	Self     bool      `json:"self,omitempty"`
	// ConfigMatch is false while the peer runs another configuration.
	ConfigMatch bool `json:"config_match"`
	// Region is the peer's region label from this proxy's configuration.
	Region string `json:"region,omitempty"`
	// WireFormats are the payload formats the peer speaks, as far as this
	// proxy knows: the range it advertises ("5..6"), else the format of
	// its latest payload (an older build: "5"); "" not known yet.
	WireFormats string `json:"wire_formats,omitempty"`
	// WireFormat is the format this proxy sends it; 0: none, the two have
	// no format in common.
	WireFormat int `json:"wire_format"`
}

// Start opens the state in stateDir (locking it), builds the Node and joins
// the gossip. cfg.Peers, when set, must name g.Peers in order; empty, it
// is taken from them.
func Start(cfg Config, g GossipConfig, stateDir string, opts NodeOptions) (*Runtime, error) {
	names := make([]string, len(g.Peers))
	for i, p := range g.Peers {
		names[i] = p.Name
	}
	if len(cfg.Peers) == 0 {
		cfg.Peers = names
	} else if !slices.Equal(cfg.Peers, names) {
		return nil, fmt.Errorf("cluster: Config.Peers %q and the gossip's peers %q differ", cfg.Peers, names)
	}
	var key []byte
	if g.SecretKeyFile != "" {
		k, err := mesh.LoadKey(g.SecretKeyFile)
		if err != nil {
			return nil, fmt.Errorf("cluster: secret_key_file: %w", err)
		}
		key = k
	} else if !g.Insecure {
		return nil, errors.New("cluster: no secret_key_file and insecure is not set")
	}
	store, err := OpenFileStore(stateDir)
	if err != nil {
		return nil, fmt.Errorf("cluster: state_dir: %w", err)
	}
	node, err := NewNode(cfg, store, BootClock{}, opts)
	if err != nil {
		store.Close()
		return nil, err
	}
	peers := make([]mesh.Peer, len(g.Peers))
	for i, p := range g.Peers {
		peers[i] = mesh.Peer{Name: p.Name, Address: p.Address}
	}
	m, err := mesh.New(mesh.Config{
		NodeName: cfg.Name, Bind: g.Bind, Advertise: g.Advertise, Label: g.Label, Peers: peers,
		SecretKey: key, Insecure: g.Insecure, ConfigHash: g.ConfigHash, Logger: g.Logger,
		GossipInterval: g.GossipInterval, ProbeInterval: g.ProbeInterval, RejoinInterval: g.RejoinInterval, WAN: g.WAN,
		Meta: WireMeta(),
	}, node)
	if err != nil {
		node.Close()
		store.Close()
		return nil, fmt.Errorf("cluster: gossip: %w", err)
	}
	node.Start(m)
	return &Runtime{Node: node, store: store, mesh: m}, nil
}

// Members returns every configured peer as the gossip layer sees it.
func (r *Runtime) Members() []Member {
	ms := r.mesh.Members()
	var wire map[string]wireView
	if p := r.wire.Load(); p != nil {
		wire = *p
	}
	out := make([]Member, len(ms))
	for i, m := range ms {
		w := wire[m.Name]
		out[i] = Member{Name: m.Name, Address: m.Address, State: m.State.String(), LastSeen: m.LastSeen,
			Self: m.Self, ConfigMatch: m.ConfigHashMatch || m.Self, WireFormats: w.formats, WireFormat: int(w.send)}
	}
	return out
}

// Close leaves the gossip, stops the Node and unlocks the state.
func (r *Runtime) Close() error {
	err := r.mesh.Close()
	r.Node.Close()
	return errors.Join(err, r.store.Close())
}

var _ mesh.MetaHandler = (*Node)(nil)
