package mesh

import (
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate adapts the Mesh to memberlist's callback interfaces. memberlist
// calls several of them with its node lock held and from concurrent UDP
// and TCP goroutines: they only check, count and queue, never block.
type delegate struct{ m *Mesh }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate  = (*delegate)(nil)
)

// NodeMeta advertises this node's envelope (label, name, boot id, config
// hash) so peers can check it before admitting the node, with the
// protocol's Config.Meta as its payload.
func (d *delegate) NodeMeta(limit int) []byte {
	meta := d.m.ident.Load().meta
	if len(meta) > limit {
		return nil // cannot happen: New checks the size
	}
	return meta
}

// NotifyMsg receives messages sent with Send, SendBestEffort and
// Broadcast. buf belongs to memberlist: the handler copies what it keeps.
func (d *delegate) NotifyMsg(buf []byte) {
	m := d.m
	if m.closed.Load() {
		return
	}
	e, ok := m.accept(buf, kindMessage, MaxReliablePayload)
	if !ok {
		return
	}
	if !m.h.OnMessage(e.sender, e.payload) {
		m.countDrop(dropOverflow, e.sender)
	}
}

// GetBroadcasts hands memberlist the queued broadcasts that fit.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.m.queue.GetBroadcasts(overhead, limit)
}

// LocalState wraps the handler's state for a push/pull.
func (d *delegate) LocalState(join bool) []byte {
	m := d.m
	if m.closed.Load() {
		return nil
	}
	st := m.h.LocalState()
	if len(st) > MaxStatePayload {
		m.log.Error("mesh: local state too large to sync, not sent", "bytes", len(st), "limit", MaxStatePayload)
		return nil
	}
	return m.envelope(kindState, st)
}

// MergeRemoteState checks a peer's state and queues it for the handler.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	m := d.m
	if m.closed.Load() || len(buf) == 0 {
		return
	}
	e, ok := m.accept(buf, kindState, MaxStatePayload)
	if !ok {
		return
	}
	if !m.h.MergeRemoteState(e.payload) {
		m.countDrop(dropOverflow, e.sender)
	}
}

// NotifyAlive admits only configured peers, at their configured address
// when it is an IP, whose meta is a well-formed envelope of this cluster
// naming the node itself. Refused nodes never become members.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	m := d.m
	if n.Name == m.self {
		return nil // memberlist refutes impostors of our own name
	}
	p, ok := m.peers[n.Name]
	if !ok {
		m.countDrop(dropStranger, n.Name)
		return fmt.Errorf("node %q is not a configured peer", n.Name)
	}
	if p.checkAddr && (!p.ip.Equal(n.Addr) || p.port != n.Port) {
		m.countDrop(dropStranger, n.Name)
		return fmt.Errorf("node %q at %s, configured at %s", n.Name, n.Address(), p.address)
	}
	e, r := decodeEnvelope(n.Meta)
	if r == dropNone && e.kind != kindMeta {
		r = dropGarbage
	}
	if r == dropNone && e.label != m.cfg.Label {
		r = dropWrongLabel
	}
	if r == dropNone && e.sender != n.Name {
		r = dropStranger
	}
	if r != dropNone {
		m.countDrop(r, n.Name)
		return fmt.Errorf("node %q: meta refused: %s", n.Name, r)
	}
	// A different config hash is admitted: membership is about identity;
	// its messages are dropped, and Members shows the mismatch.
	return nil
}

// NotifyJoin: a peer became alive (or was first seen).
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	d.m.peerUp(n, true)
}

// NotifyUpdate: a live peer's meta changed (new boot id or config hash).
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	d.m.peerUp(n, false)
}

// NotifyLeave: memberlist declared a peer dead, or it left.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	m := d.m
	p, ok := m.peers[n.Name]
	if !ok || n.Name == m.self {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	was := p.state
	p.state = StateDead
	if was == StateAlive && !m.closed.Load() {
		m.h.OnPeerChange(p.name, false)
	}
}

// AckPayload adds nothing to probe acks: acks are matched by sequence
// number only, so the protocol must not rely on them (docs/design.md).
func (d *delegate) AckPayload() []byte { return nil }

// NotifyPingComplete records a successful probe as a sign of life.
func (d *delegate) NotifyPingComplete(n *memberlist.Node, _ time.Duration, _ []byte) {
	m := d.m
	p, ok := m.peers[n.Name]
	if !ok {
		return
	}
	m.mu.Lock()
	p.lastSeen = time.Now()
	m.mu.Unlock()
}

// peerUp handles join (join=true) and meta updates of a live peer.
func (m *Mesh) peerUp(n *memberlist.Node, join bool) {
	p, ok := m.peers[n.Name]
	if !ok || n.Name == m.self {
		return
	}
	e, r := decodeEnvelope(n.Meta)
	m.mu.Lock()
	defer m.mu.Unlock()
	was := p.state
	p.state = StateAlive
	p.lastSeen = time.Now()
	restarted := false
	if r == dropNone {
		if p.bootID != 0 && e.bootID != p.bootID && was == StateAlive && !join {
			restarted = true
		}
		// memberlist orders metas by incarnation, so its latest is current
		// even if the boot id went down (a clock step between starts).
		p.bootID = e.bootID
		p.configHash, p.hashKnown = e.configHash, true
	}
	if m.closed.Load() {
		return
	}
	if mh, ok := m.h.(MetaHandler); ok && r == dropNone {
		mh.OnPeerMeta(p.name, e.payload)
	}
	switch {
	case was != StateAlive:
		m.h.OnPeerChange(p.name, true)
	case restarted:
		m.restartedLocked(p)
	}
}
