package mesh

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/hashicorp/memberlist"
)

// The mesh's own timings, which users do not set (the intervals they do
// set are required in Config: package config owns their defaults).
const (
	// tcpTimeout bounds a reliable send, a join attempt and so Close:
	// generous for a LAN, short enough that SIGTERM is not held up long.
	tcpTimeout = 5 * time.Second
	// joinRetryMin is the first retry delay while a peer is not joined;
	// it doubles up to RejoinInterval.
	joinRetryMin = 100 * time.Millisecond
	// DefaultDropLogInterval: dropped packets and messages are logged at
	// most this often, with their counts, so hostile traffic cannot flood
	// the log.
	DefaultDropLogInterval = 10 * time.Second
)

// Errors returned by the send methods.
var (
	ErrClosed      = errors.New("mesh is closed")
	ErrUnknownPeer = errors.New("not a configured peer")
	ErrTooLarge    = errors.New("payload too large")
)

// Peer is one proxy of the cluster.
type Peer struct {
	// Name is the node name, unique in the cluster.
	Name string
	// Address is the gossip address "host:port", TCP and UDP. With an IP
	// host, a node claiming Name from another address is refused.
	Address string
}

// Config configures a Mesh. Fields marked required have no default.
type Config struct {
	// NodeName is this proxy's name; required, and must be one of Peers.
	NodeName string
	// Bind is the "ip:port" to listen on; required unless Transport is
	// set.
	Bind string
	// Advertise is the "ip:port" other peers reach this node at; required
	// (normally this node's Address in Peers, which the others expect).
	Advertise string
	// Label separates clusters sharing a network: memberlist drops packets
	// with another label, and every envelope carries it. Empty is allowed.
	Label string
	// Peers lists every proxy of the cluster, this one included; required.
	Peers []Peer
	// SecretKey encrypts and authenticates gossip (16, 24 or 32 bytes,
	// AES-128/192/256). Required unless Insecure.
	SecretKey []byte
	// Insecure allows running without SecretKey: gossip in clear text.
	Insecure bool
	// ConfigHash identifies the cluster configuration (peer list,
	// services); messages with another hash are dropped. At most 255 bytes.
	ConfigHash string
	// Logger receives the mesh's and memberlist's logs. Nil: slog.Default().
	Logger *slog.Logger
	// GossipInterval is how often queued broadcasts go out; required.
	GossipInterval time.Duration
	// ProbeInterval is memberlist's failure-detection period; the probe
	// timeout is half of it, and the push/pull full sync runs every 30 of
	// them. Required.
	ProbeInterval time.Duration
	// RejoinInterval is how often peers that are not alive are joined
	// again (memberlist stops probing a dead node, so without this a long
	// partition would never heal); required.
	RejoinInterval time.Duration
	// WAN: proxies spread over regions. A peer that misses probes stays
	// suspected for memberlist's WAN multiple of the probe interval, not
	// its LAN one, before it is declared dead.
	WAN bool
	// DropLogInterval is how often dropped packets and messages are
	// summarised in the log (one line with the counts). Zero:
	// DefaultDropLogInterval.
	DropLogInterval time.Duration
	// Meta is the protocol's own part of this node's memberlist meta
	// (the payload of its meta envelope), which peers are handed through
	// MetaHandler; a build that predates it ignores it. Nil: none. At most
	// what the meta limit leaves after label, name and config hash.
	Meta []byte
	// Transport replaces the mesh's own transport, which authenticates
	// datagrams before memberlist sees them (Bind is then unused), for
	// example a FaultyTransport in tests. New owns it, even on error.
	Transport memberlist.Transport
}

// Handler is what the protocol gives the mesh. Its methods are called from
// memberlist's goroutines, concurrently and in no set order between the
// UDP and TCP paths: they must not block (the protocol's one queue is the
// handler's own; a full one drops, and the mesh counts the drop) and must
// copy any buffer they keep, which memberlist reuses.
type Handler interface {
	// OnMessage delivers a payload from the named configured peer; false
	// when the handler could not take it (its queue is full).
	OnMessage(from string, msg []byte) bool
	// OnPeerChange reports a configured peer becoming alive or dead in
	// memberlist's view. A peer seen with a newer boot id while alive (it
	// restarted faster than it could be declared dead) is reported dead
	// and then alive again.
	OnPeerChange(name string, alive bool)
	// LocalState returns this node's state for a joiner's full sync.
	LocalState() []byte
	// MergeRemoteState merges a peer's LocalState (max wins); false when
	// the handler could not take it. Which peer sent it is not known:
	// memberlist does not say.
	MergeRemoteState(buf []byte) bool
}

// MetaHandler is implemented by a Handler that wants its peers' Config.Meta.
type MetaHandler interface {
	// OnPeerMeta is called when a configured peer joins and whenever its
	// meta changes (a restart, perhaps as another build), with the meta
	// it advertises (empty: none). Like Handler's methods it must not
	// block, and must copy meta.
	OnPeerMeta(name string, meta []byte)
}

// State is a peer's state as this node sees it.
type State int

// Peer states.
const (
	// StateUnknown: never seen since this node started.
	StateUnknown State = iota
	// StateAlive: memberlist lists it as alive.
	StateAlive
	// StateSuspect: memberlist still lists it, but this node has had no
	// ack or message from it for a while (memberlist v0.7.0 does not
	// expose its own suspect state).
	StateSuspect
	// StateDead: memberlist declared it failed, or it left.
	StateDead
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	default:
		return "unknown"
	}
}

// MemberState describes one configured peer.
type MemberState struct {
	Name    string
	Address string // as configured
	State   State
	// LastSeen is the last direct sign of life: a probe ack, a message or
	// a join. Zero: never.
	LastSeen time.Time
	// BootID is the peer's current boot id; zero if not known yet.
	BootID uint64
	// ConfigHashMatch is true when the peer is known to use this node's
	// config hash.
	ConfigHashMatch bool
	// Self marks this node.
	Self bool
}

// Drops counts incoming envelopes dropped, by reason.
type Drops struct {
	Garbage    uint64 // malformed, truncated, wrong kind
	WrongLabel uint64 // another cluster's label
	Stranger   uint64 // sender not a configured peer (or claiming our name, or from the wrong address)
	ConfigHash uint64 // another configuration
	TooLarge   uint64 // over the size bound
	Version    uint64 // an envelope version this build does not speak
	Overflow   uint64 // the handler fell behind
	// Unauthenticated counts datagrams that failed decryption with the
	// gossip key: another key, or random bytes.
	Unauthenticated uint64
}

// Total is the sum of all drops.
func (d Drops) Total() uint64 {
	return d.Garbage + d.WrongLabel + d.Stranger + d.ConfigHash + d.TooLarge + d.Version + d.Overflow + d.Unauthenticated
}

// Stats are the mesh's counters since New.
type Stats struct {
	Sent     uint64 // messages sent (Send, SendBestEffort) or queued (Broadcast)
	Received uint64 // messages and state syncs accepted for the handler
	Dropped  Drops
	// QueuedBroadcasts are broadcasts still being retransmitted.
	QueuedBroadcasts int
}

// identity is what this node stamps on every envelope; replaced as a
// whole when the config hash changes.
type identity struct {
	configHash string
	meta       []byte // memberlist node meta: a kindMeta envelope
	maxPacket  int    // largest payload that fits one gossip packet
}

type peerInfo struct {
	name      string
	address   string
	ip        net.IP // nil when the address is a host name
	port      uint16
	checkAddr bool

	// Guarded by Mesh.mu.
	state      State
	lastSeen   time.Time
	bootID     uint64
	configHash string
	hashKnown  bool
}

// Mesh is this node's membership and message transport. Its methods are
// safe for concurrent use.
type Mesh struct {
	cfg          Config
	log          *slog.Logger
	h            Handler
	self         string
	bootID       uint64
	ident        atomic.Pointer[identity]
	peers        map[string]*peerInfo // keys fixed at New
	order        []string
	suspectAfter time.Duration
	leaveTimeout time.Duration
	metricLabels []metrics.Label

	ml    *memberlist.Memberlist
	tr    *closingTransport
	queue *memberlist.TransmitLimitedQueue

	mu sync.Mutex // guards peerInfo's mutable fields

	sent, received atomic.Uint64
	lastDropSender atomic.Pointer[string] // for the drop report
	joinAttempts   atomic.Uint64          // for tests: the rejoin loop's Join calls
	drops          [numDropReasons]atomic.Uint64
	dropLabels     [numDropReasons][]metrics.Label

	stop      chan struct{}
	wg        sync.WaitGroup
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// New validates cfg, starts memberlist and the handler's event loop, and
// joins the other peers in the background, retrying until they are
// joined and re-joining any that memberlist later declares dead.
func New(cfg Config, h Handler) (*Mesh, error) {
	m, err := newMesh(cfg, h)
	if err != nil {
		if cfg.Transport != nil && (m == nil || m.tr == nil) {
			_ = cfg.Transport.Shutdown()
		}
		return nil, err
	}
	return m, nil
}

func newMesh(cfg Config, h Handler) (*Mesh, error) {
	if h == nil {
		return nil, errors.New("mesh: nil handler")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DropLogInterval <= 0 {
		cfg.DropLogInterval = DefaultDropLogInterval
	}
	m := &Mesh{
		cfg:   cfg,
		log:   cfg.Logger.With("node", cfg.NodeName),
		h:     h,
		self:  cfg.NodeName,
		peers: make(map[string]*peerInfo, len(cfg.Peers)),
		stop:  make(chan struct{}),
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	m.bootID = newBootID()
	m.suspectAfter = 2 * time.Duration(len(cfg.Peers)) * cfg.ProbeInterval
	m.leaveTimeout = min(max(10*cfg.GossipInterval, time.Second), tcpTimeout)
	m.metricLabels = []metrics.Label{{Name: "node", Value: cfg.NodeName}}
	if cfg.Label != "" {
		m.metricLabels = append(m.metricLabels, metrics.Label{Name: "cluster", Value: cfg.Label})
	}
	for r := range m.dropLabels {
		m.dropLabels[r] = append(m.metricLabels[:len(m.metricLabels):len(m.metricLabels)],
			metrics.Label{Name: "reason", Value: dropReason(r).String()})
	}
	id, err := m.newIdentity(cfg.ConfigHash)
	if err != nil {
		return nil, err
	}
	m.ident.Store(id)
	n := len(cfg.Peers)
	m.queue = &memberlist.TransmitLimitedQueue{
		// Retransmit count grows with log(N): count the configured N, not
		// whoever is alive right now.
		NumNodes:       func() int { return n },
		RetransmitMult: memberlist.DefaultLANConfig().RetransmitMult,
	}

	mc, err := m.memberlistConfig()
	if err != nil {
		return nil, err
	}
	m.wg.Add(1)
	go m.reportDrops()
	ml, err := memberlist.Create(mc)
	if err != nil {
		close(m.stop)
		m.wg.Wait()
		_ = m.tr.Shutdown()
		// m is returned only so New knows the transport is already shut.
		return m, fmt.Errorf("mesh: node %q: start memberlist: %w", m.self, err)
	}
	m.ml = ml
	m.wg.Add(1)
	go m.joinLoop()
	return m, nil
}

func (m *Mesh) validate() error {
	cfg := &m.cfg
	var errs []error
	if cfg.NodeName == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	addrs := make(map[string]string)
	for i, p := range cfg.Peers {
		if p.Name == "" {
			errs = append(errs, fmt.Errorf("peer %d: empty name", i))
			continue
		}
		if _, dup := m.peers[p.Name]; dup {
			errs = append(errs, fmt.Errorf("peer %q: listed twice", p.Name))
			continue
		}
		host, portStr, err := net.SplitHostPort(p.Address)
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %q: address %q: %w", p.Name, p.Address, err))
			continue
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 {
			errs = append(errs, fmt.Errorf("peer %q: address %q: bad port", p.Name, p.Address))
			continue
		}
		if other, dup := addrs[p.Address]; dup {
			errs = append(errs, fmt.Errorf("peer %q: address %q already used by peer %q", p.Name, p.Address, other))
			continue
		}
		addrs[p.Address] = p.Name
		pi := &peerInfo{name: p.Name, address: p.Address, port: uint16(port)}
		if ip := net.ParseIP(host); ip != nil {
			pi.ip, pi.checkAddr = ip, true
		}
		m.peers[p.Name] = pi
		m.order = append(m.order, p.Name)
	}
	if cfg.NodeName != "" {
		if _, ok := m.peers[cfg.NodeName]; !ok {
			errs = append(errs, fmt.Errorf("node name %q is not among the peers", cfg.NodeName))
		}
	}
	switch {
	case len(cfg.SecretKey) > 0:
		if err := memberlist.ValidateKey(cfg.SecretKey); err != nil {
			errs = append(errs, fmt.Errorf("secret key: %w", err))
		}
	case !cfg.Insecure:
		errs = append(errs, errors.New("no secret key: set one, or set insecure to run gossip in clear text"))
	}
	if n := envelopeHeaderLen(cfg.Label, cfg.NodeName, cfg.ConfigHash) + len(cfg.Meta); n > maxMetaLen {
		errs = append(errs, fmt.Errorf("label, node name, config hash and meta take %d bytes together, at most %d fit", n-fixedEnvelopeLen, maxMetaLen-fixedEnvelopeLen))
	}
	if len(cfg.Label) > 255 || len(cfg.NodeName) > 255 || len(cfg.ConfigHash) > 255 {
		errs = append(errs, errors.New("label, node name and config hash must each be at most 255 bytes"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"gossip interval", cfg.GossipInterval}, {"probe interval", cfg.ProbeInterval}, {"rejoin interval", cfg.RejoinInterval}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s is %v, want a positive duration", d.name, d.v))
		}
	}
	if cfg.Advertise == "" {
		errs = append(errs, errors.New("no advertise address"))
	}
	if cfg.Bind == "" && cfg.Transport == nil {
		errs = append(errs, errors.New("no bind address"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mesh: node %q: %w", cfg.NodeName, err)
	}
	return nil
}

func (m *Mesh) newIdentity(configHash string) (*identity, error) {
	meta, err := encodeEnvelope(nil, kindMeta, m.cfg.Label, m.self, m.bootID, configHash, m.cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("mesh: node %q: %w", m.self, err)
	}
	// What one gossip packet leaves for a payload: memberlist's budget
	// (compound header and entry, user message type, label header,
	// worst-case encryption, CRC) and then our envelope.
	avail := memberlist.DefaultLANConfig().UDPBufferSize - 2 - 2 - 1 - 5
	if m.cfg.Label != "" {
		avail -= 2 + len(m.cfg.Label)
	}
	if len(m.cfg.SecretKey) > 0 {
		avail -= 45
	}
	avail -= envelopeHeaderLen(m.cfg.Label, m.self, configHash)
	return &identity{configHash: configHash, meta: meta, maxPacket: avail}, nil
}

func (m *Mesh) memberlistConfig() (*memberlist.Config, error) {
	cfg := m.cfg
	mc := memberlist.DefaultLANConfig()
	mc.Name = m.self
	mc.Label = cfg.Label
	mc.Logger = newLimitedStdLogger(cfg.Logger, cfg.DropLogInterval)
	mc.MetricLabels = m.metricLabels
	mc.TCPTimeout = tcpTimeout
	mc.GossipInterval = cfg.GossipInterval
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeInterval / 2
	if cfg.WAN {
		mc.SuspicionMult = memberlist.DefaultWANConfig().SuspicionMult
	}
	mc.PushPullInterval = 30 * cfg.ProbeInterval
	mc.GossipToTheDeadTime = 30 * cfg.ProbeInterval
	// A peer whose host name now resolves elsewhere may take its name back
	// once it has been dead this long.
	mc.DeadNodeReclaimTime = 5 * cfg.ProbeInterval
	// LZW on every packet cost a proxy with 1,000 services a fifth of its
	// CPU (a fresh table per packet) for payloads that are already small
	// and binary. Peers read compressed and plain packets alike.
	mc.EnableCompression = false
	if len(cfg.SecretKey) > 0 {
		mc.SecretKey = append([]byte(nil), cfg.SecretKey...)
	}
	d := &delegate{m: m}
	mc.Delegate = d
	mc.Events = d
	mc.Alive = d
	mc.Ping = d

	adv := cfg.Advertise
	ip, port, err := resolveIPPort(adv)
	if err != nil {
		return nil, fmt.Errorf("mesh: node %q: advertise address: %w", m.self, err)
	}
	mc.AdvertiseAddr, mc.AdvertisePort = ip.String(), port

	inner := cfg.Transport
	if inner == nil {
		bind := cfg.Bind
		bip, bport, err := resolveIPPort(bind)
		if err != nil {
			return nil, fmt.Errorf("mesh: node %q: bind address: %w", m.self, err)
		}
		auth, err := newPacketAuth(cfg.Label, cfg.SecretKey)
		if err != nil {
			return nil, fmt.Errorf("mesh: node %q: %w", m.self, err)
		}
		gt, err := newGuardTransport(bip, bport, auth, func(r dropReason) { m.countDrop(r, "") }, mc.Logger)
		if err != nil {
			return nil, fmt.Errorf("mesh: node %q: listen on %s: %w", m.self, bind, err)
		}
		inner = gt
	}
	m.tr = newClosingTransport(inner)
	mc.Transport = m.tr
	return mc, nil
}

func resolveIPPort(addr string) (net.IP, int, error) {
	a, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, 0, err
	}
	if a.IP == nil {
		return net.IPv4zero, a.Port, nil
	}
	return a.IP, a.Port, nil
}

func newBootID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	// High bits from the start time so a restart usually reads as newer;
	// low bits random so two starts in one millisecond differ.
	ms := uint64(time.Now().UnixMilli())
	return ms<<16 | uint64(binary.BigEndian.Uint16(b[:]))
}

// BootID is this process's boot id, random per start, stamped on every
// envelope; the protocol may use it in nonces.
func (m *Mesh) BootID() uint64 { return m.bootID }

// MaxPacketPayload is the largest payload SendBestEffort and Broadcast
// accept: it must fit one UDP packet with encryption overhead.
func (m *Mesh) MaxPacketPayload() int { return m.ident.Load().maxPacket }

// N is the number of configured peers, this node included.
func (m *Mesh) N() int { return len(m.order) }

// envelope wraps payload in this node's envelope.
func (m *Mesh) envelope(kind byte, payload []byte) []byte {
	id := m.ident.Load()
	buf := make([]byte, 0, envelopeHeaderLen(m.cfg.Label, m.self, id.configHash)+len(payload))
	// Field lengths were validated in New.
	buf, _ = encodeEnvelope(buf, kind, m.cfg.Label, m.self, m.bootID, id.configHash, payload)
	return buf
}

// node returns the memberlist node to send to: the configured address, or
// memberlist's view of a peer configured by host name.
func (m *Mesh) node(to string) (*memberlist.Node, error) {
	p, ok := m.peers[to]
	if !ok {
		return nil, fmt.Errorf("mesh: send to %q: %w", to, ErrUnknownPeer)
	}
	if p.ip != nil {
		return &memberlist.Node{Name: p.name, Addr: p.ip, Port: p.port}, nil
	}
	for _, n := range m.ml.Members() {
		if n.Name == to {
			c := *n
			return &c, nil
		}
	}
	ip, port, err := resolveIPPort(p.address)
	if err != nil {
		return nil, fmt.Errorf("mesh: send to %q: resolve %q: %w", to, p.address, err)
	}
	return &memberlist.Node{Name: p.name, Addr: ip, Port: uint16(port)}, nil
}

// Send delivers msg reliably (memberlist SendReliable, over TCP) to the
// named peer, whatever memberlist thinks of its health. A nil error means
// the peer's socket took the bytes, not that its handler ran. Sending to
// this node's own name hands msg to its own handler.
func (m *Mesh) Send(to string, msg []byte) error {
	if m.closed.Load() {
		return fmt.Errorf("mesh: send to %q: %w", to, ErrClosed)
	}
	if len(msg) > MaxReliablePayload {
		return fmt.Errorf("mesh: send to %q: %d bytes, limit %d: %w", to, len(msg), MaxReliablePayload, ErrTooLarge)
	}
	if to == m.self {
		return m.sendSelf(msg)
	}
	n, err := m.node(to)
	if err != nil {
		return err
	}
	if err := m.ml.SendReliable(n, m.envelope(kindMessage, msg)); err != nil {
		return fmt.Errorf("mesh: send to %q: %w", to, err)
	}
	m.countSent()
	return nil
}

// SendBestEffort sends msg in one UDP packet (memberlist SendBestEffort)
// to the named peer; it may be lost. msg must fit MaxPacketPayload.
func (m *Mesh) SendBestEffort(to string, msg []byte) error {
	if m.closed.Load() {
		return fmt.Errorf("mesh: send to %q: %w", to, ErrClosed)
	}
	if limit := m.MaxPacketPayload(); len(msg) > limit {
		return fmt.Errorf("mesh: send to %q: %d bytes, packet limit %d: %w", to, len(msg), limit, ErrTooLarge)
	}
	if to == m.self {
		return m.sendSelf(msg)
	}
	n, err := m.node(to)
	if err != nil {
		return err
	}
	if err := m.ml.SendBestEffort(n, m.envelope(kindMessage, msg)); err != nil {
		return fmt.Errorf("mesh: send to %q: %w", to, err)
	}
	m.countSent()
	return nil
}

func (m *Mesh) sendSelf(msg []byte) error {
	if !m.h.OnMessage(m.self, msg) {
		m.countDrop(dropOverflow, m.self)
		return fmt.Errorf("mesh: send to self %q: handler queue full", m.self)
	}
	m.countSent()
	return nil
}

// Broadcast gossips msg to every peer through memberlist's
// TransmitLimitedQueue (piggybacked on gossip, retransmitted about
// 4·log(N+1) times, not to this node). A later broadcast with the same
// non-empty key replaces a queued older one; an empty key never replaces.
// msg must fit MaxPacketPayload.
func (m *Mesh) Broadcast(key string, msg []byte) error {
	if m.closed.Load() {
		return fmt.Errorf("mesh: broadcast %q: %w", key, ErrClosed)
	}
	if limit := m.MaxPacketPayload(); len(msg) > limit {
		return fmt.Errorf("mesh: broadcast %q: %d bytes, packet limit %d: %w", key, len(msg), limit, ErrTooLarge)
	}
	b := m.envelope(kindMessage, msg)
	if key == "" {
		m.queue.QueueBroadcast(&uniqueBroadcast{msg: b})
	} else {
		m.queue.QueueBroadcast(&namedBroadcast{name: key, msg: b})
	}
	m.countSent()
	return nil
}

// SetConfigHash changes the hash stamped on and required of envelopes
// (after a reload) and re-advertises this node's meta.
func (m *Mesh) SetConfigHash(h string) error {
	if envelopeHeaderLen(m.cfg.Label, m.self, h)+len(m.cfg.Meta) > maxMetaLen || len(h) > 255 {
		return fmt.Errorf("mesh: node %q: config hash of %d bytes is too long", m.self, len(h))
	}
	id, err := m.newIdentity(h)
	if err != nil {
		return err
	}
	m.ident.Store(id)
	if err := m.ml.UpdateNode(m.leaveTimeout); err != nil {
		return fmt.Errorf("mesh: node %q: advertise new config hash: %w", m.self, err)
	}
	return nil
}

// Members describes every configured peer, in configuration order.
func (m *Mesh) Members() []MemberState {
	now := time.Now()
	hash := m.ident.Load().configHash
	out := make([]MemberState, 0, len(m.order))
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, name := range m.order {
		p := m.peers[name]
		ms := MemberState{Name: name, Address: p.address}
		if name == m.self {
			ms.State, ms.LastSeen, ms.BootID, ms.ConfigHashMatch, ms.Self = StateAlive, now, m.bootID, true, true
			out = append(out, ms)
			continue
		}
		ms.State = p.state
		if ms.State == StateAlive && now.Sub(p.lastSeen) > m.suspectAfter {
			ms.State = StateSuspect
		}
		ms.LastSeen = p.lastSeen
		ms.BootID = p.bootID
		ms.ConfigHashMatch = p.hashKnown && p.configHash == hash
		out = append(out, ms)
	}
	return out
}

// Stats returns the mesh's counters.
func (m *Mesh) Stats() Stats {
	s := Stats{Sent: m.sent.Load(), Received: m.received.Load(), QueuedBroadcasts: m.queue.NumQueued()}
	s.Dropped = Drops{
		Garbage:    m.drops[dropGarbage].Load(),
		WrongLabel: m.drops[dropWrongLabel].Load(),
		Stranger:   m.drops[dropStranger].Load(),
		ConfigHash: m.drops[dropConfigHash].Load(),
		TooLarge:   m.drops[dropTooLarge].Load(),
		Version:    m.drops[dropVersion].Load(),
		Overflow:   m.drops[dropOverflow].Load(),

		Unauthenticated: m.drops[dropUnauthenticated].Load(),
	}
	return s
}

// Close leaves the cluster (waiting a bounded time for the leave to be
// gossiped), shuts memberlist down and waits for the mesh's goroutines.
// It is idempotent; later calls return the first call's result.
func (m *Mesh) Close() error {
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		var errs []error
		if err := m.ml.Leave(m.leaveTimeout); err != nil {
			// Not fatal: the others will find us dead instead of left.
			errs = append(errs, fmt.Errorf("mesh: node %q: leave: %w", m.self, err))
		}
		if err := m.ml.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("mesh: node %q: shutdown: %w", m.self, err))
		}
		m.tr.abort()
		close(m.stop)
		m.wg.Wait()
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

func (m *Mesh) countSent() {
	m.sent.Add(1)
	metrics.IncrCounterWithLabels([]string{"mesh", "sent"}, 1, m.metricLabels)
}

// countDrop counts a refused packet or message: an atomic add, no more,
// since hostile traffic sets the pace. Nothing is logged here, so that it
// cannot flood the log; reportDrops passes the counts on to the metrics
// every second and sums them up in the log once per DropLogInterval.
func (m *Mesh) countDrop(r dropReason, sender string) {
	m.drops[r].Add(1)
	if sender != "" {
		m.lastDropSender.Store(&sender)
	}
}

// dropMetricsEvery is how often drop counts reach the metrics.
const dropMetricsEvery = time.Second

// reportDrops adds the drops to the metrics every dropMetricsEvery and
// logs, at most once per DropLogInterval, how many packets and messages
// were dropped since the last report, by reason.
func (m *Mesh) reportDrops() {
	defer m.wg.Done()
	t := time.NewTicker(min(dropMetricsEvery, m.cfg.DropLogInterval))
	defer t.Stop()
	var metered, logged [numDropReasons]uint64
	nextLog := time.Now().Add(m.cfg.DropLogInterval)
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		for r := dropGarbage; r < numDropReasons; r++ {
			n := m.drops[r].Load()
			if d := n - metered[r]; d > 0 {
				metrics.IncrCounterWithLabels([]string{"mesh", "dropped"}, float32(d), m.dropLabels[r])
			}
			metered[r] = n
		}
		if time.Now().Before(nextLog) {
			continue
		}
		nextLog = time.Now().Add(m.cfg.DropLogInterval)
		var total uint64
		attrs := []any{"interval", m.cfg.DropLogInterval}
		for r := dropGarbage; r < numDropReasons; r++ {
			n := m.drops[r].Load()
			if d := n - logged[r]; d > 0 {
				total += d
				attrs = append(attrs, r.String(), d)
			}
			logged[r] = n
		}
		if total == 0 {
			continue
		}
		if s := m.lastDropSender.Swap(nil); s != nil {
			attrs = append(attrs, "last_named_sender", *s)
		}
		m.log.Warn("mesh: dropped bad gossip packets or messages", append([]any{"count", total}, attrs...)...)
	}
}

// accept checks an incoming envelope of the wanted kind; on success it
// records the sign of life and returns the envelope.
func (m *Mesh) accept(buf []byte, want byte, limit int) (envelope, bool) {
	if len(buf) > limit+maxHeaderLen {
		m.countDrop(dropTooLarge, "")
		return envelope{}, false
	}
	e, r := decodeEnvelope(buf)
	if r == dropNone && len(e.payload) > limit {
		r = dropTooLarge
	}
	if r == dropNone && e.kind != want {
		r = dropGarbage
	}
	if r == dropNone && e.label != m.cfg.Label {
		r = dropWrongLabel
	}
	var p *peerInfo
	if r == dropNone {
		var ok bool
		// Our own name from the network is another process using it.
		if p, ok = m.peers[e.sender]; !ok || e.sender == m.self {
			r = dropStranger
		}
	}
	if r == dropNone && e.configHash != m.ident.Load().configHash {
		r = dropConfigHash
		m.mu.Lock()
		p.configHash, p.hashKnown = e.configHash, true
		m.mu.Unlock()
	}
	if r != dropNone {
		m.countDrop(r, e.sender)
		return envelope{}, false
	}
	m.sawMessage(p, e.bootID, e.configHash)
	m.received.Add(1)
	return e, true
}

// sawMessage records a valid message from p. A boot id newer than the
// one known while p is alive means p restarted without being declared dead.
func (m *Mesh) sawMessage(p *peerInfo, boot uint64, hash string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p.lastSeen = time.Now()
	p.configHash, p.hashKnown = hash, true
	switch {
	case p.bootID == 0:
		p.bootID = boot
	case boot > p.bootID:
		p.bootID = boot
		if p.state == StateAlive {
			m.restartedLocked(p)
		}
	}
}

func (m *Mesh) restartedLocked(p *peerInfo) {
	m.log.Info("mesh: peer restarted", "peer", p.name)
	m.h.OnPeerChange(p.name, false)
	m.h.OnPeerChange(p.name, true)
}

// joinLoop joins every configured peer memberlist does not list as alive:
// quickly at first, then every RejoinInterval.
func (m *Mesh) joinLoop() {
	defer m.wg.Done()
	delay := min(joinRetryMin, m.cfg.RejoinInterval)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		wait := m.cfg.RejoinInterval
		if !m.rejoin() {
			wait = delay
			delay = min(2*delay, m.cfg.RejoinInterval)
		} else {
			delay = min(joinRetryMin, m.cfg.RejoinInterval)
		}
		t.Reset(wait)
	}
}

// rejoin tries every missing peer at once (one slow peer must not hold up
// the rest) and reports whether all peers are alive afterwards.
func (m *Mesh) rejoin() bool {
	missing := m.missingPeers()
	if len(missing) == 0 {
		return true
	}
	var wg sync.WaitGroup
	for _, p := range missing {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m.closed.Load() {
				return
			}
			m.joinAttempts.Add(1)
			if _, err := m.ml.Join([]string{p.name + "/" + p.address}); err != nil {
				m.log.Debug("mesh: join failed", "peer", p.name, "address", p.address, "err", err)
			}
		}()
	}
	wg.Wait()
	return len(m.missingPeers()) == 0
}

func (m *Mesh) missingPeers() []*peerInfo {
	alive := make(map[string]bool)
	for _, n := range m.ml.Members() {
		alive[n.Name] = true
	}
	var out []*peerInfo
	for _, name := range m.order {
		if name != m.self && !alive[name] {
			out = append(out, m.peers[name])
		}
	}
	return out
}

// namedBroadcast replaces a queued broadcast of the same name.
type namedBroadcast struct {
	name string
	msg  []byte
}

func (b *namedBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *namedBroadcast) Message() []byte                       { return b.msg }
func (b *namedBroadcast) Finished()                             {}
func (b *namedBroadcast) Name() string                          { return b.name }

// uniqueBroadcast never replaces anything (and skips the queue's slow
// invalidation scan).
type uniqueBroadcast struct{ msg []byte }

func (b *uniqueBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *uniqueBroadcast) Message() []byte                       { return b.msg }
func (b *uniqueBroadcast) Finished()                             {}
func (b *uniqueBroadcast) UniqueBroadcast()                      {}

var (
	_ memberlist.NamedBroadcast  = (*namedBroadcast)(nil)
	_ memberlist.UniqueBroadcast = (*uniqueBroadcast)(nil)
)
