package cluster

import (
	"fmt"
	"slices"
)

// Wire format negotiation. Every proxy advertises the payload formats it
// speaks, [wireMin, wireMax], in its gossip node meta (WireMeta); to each
// peer it sends the highest format both speak, and it reads any format it
// speaks. A peer that advertises nothing is a build from before the
// negotiation, which speaks exactly one format: the one its latest payload
// carries. Until one arrives, it is sent this build's highest (a build of
// the same format reads it; an older one drops it until its first payload
// tells which format it wants, within a lease request's period).
//
// A peer whose formats do not overlap this proxy's is warned about once,
// counted (Counters.WireVersion), sent nothing, and every payload from it
// is dropped, so that nothing it says moves a route.

// wireMetaLayout is the first byte of WireMeta; a later layout may append
// fields after the range, which this build ignores.
const wireMetaLayout = 1

// WireMeta is what a proxy advertises to its peers in its gossip node
// meta: the payload formats it reads and writes.
func WireMeta() []byte { return []byte{wireMetaLayout, wireMin, wireMax} }

// parseWireMeta reads a peer's advertised range; ok is false when it
// advertises none (an older build, or a meta layout this build does not
// know).
func parseWireMeta(b []byte) (lo, hi uint8, ok bool) {
	if len(b) < 3 || b[0] != wireMetaLayout || b[1] == 0 || b[1] > b[2] {
		return 0, 0, false
	}
	return b[1], b[2], true
}

// peerWire is what this proxy knows of one peer's formats.
type peerWire struct {
	// lo..hi is the advertised range; advertised is false when the peer
	// advertises none or its meta has not arrived yet.
	lo, hi     uint8
	advertised bool
	// heard is the format of the latest payload from the peer since its
	// meta last changed (0: none yet); only read when it advertises none.
	heard uint8
	// said is what was last logged about the peer, so that each
	// incompatibility or change of format is logged once.
	said string
}

// wireRange is the range this Machine speaks: the build's, unless a test
// makes it stand in for an older build.
func (m *Machine) wireRange() (lo, hi uint8) {
	hi = wireMax
	if k := m.cfg.knobs.wireHi; k != 0 {
		hi = k
	}
	return wireMin, hi
}

func (m *Machine) peerWire(p string) *peerWire {
	w := m.wire[p]
	if w == nil {
		w = &peerWire{}
		m.wire[p] = w
	}
	return w
}

// sendVersion is the format to send peer p in, 0 when it speaks none this
// proxy speaks.
func (m *Machine) sendVersion(p string) uint8 {
	lo, hi := m.wireRange()
	w := m.peerWire(p)
	switch {
	case w.advertised:
		v := min(w.hi, hi)
		if v < max(w.lo, lo) {
			return 0
		}
		return v
	case w.heard != 0:
		return w.heard
	}
	return hi
}

// wireGroups lists the formats some peer is sent in, lowest first: a
// broadcast reaches every peer, so it goes once per format.
func (m *Machine) wireGroups() []uint8 {
	var vs []uint8
	for _, p := range m.others {
		if v := m.sendVersion(p); v != 0 && !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

// stateWire is the format of the full-state sync, which memberlist hands
// to whichever peer it syncs with: the lowest any peer is sent in.
func (m *Machine) stateWire() uint8 {
	if vs := m.wireGroups(); len(vs) > 0 {
		return vs[0]
	}
	_, hi := m.wireRange()
	return hi
}

// peerMeta takes a peer's gossip node meta (at its join, or when it
// changed: a restart, perhaps as another build).
func (m *Machine) peerMeta(p string, meta []byte) {
	if !m.members[p] || p == m.cfg.Name {
		return
	}
	w := m.peerWire(p)
	lo, hi, ok := parseWireMeta(meta)
	if ok == w.advertised && lo == w.lo && hi == w.hi {
		return
	}
	w.lo, w.hi, w.advertised = lo, hi, ok
	w.heard = 0
	m.wireGen++
	m.sayWire(p)
}

// heardWire notes the format of a payload from p; false when the payload
// must be dropped (p speaks no format this proxy speaks, or this one,
// standing in for an older build, does not read v).
func (m *Machine) heardWire(p string, v uint8) bool {
	w := m.peerWire(p)
	if lo, hi := m.wireRange(); v < lo || v > hi || m.sendVersion(p) == 0 {
		m.counters.WireVersion++
		if !w.advertised && (v < lo || v > hi) {
			// An older build that speaks only v.
			if w.heard != 0 {
				w.heard = 0
				m.wireGen++
			}
			m.sayWireOf(p, fmt.Sprintf("%d", v), false)
		}
		return false
	}
	if !w.advertised && v != w.heard {
		// The latest, not the highest: a payload of the peer's previous
		// run, still on its way when it restarted as an older build, must
		// not fix the format for good (the simulation found that).
		w.heard = v
		m.wireGen++
		m.sayWire(p)
	}
	return true
}

// sayWire logs what changed about p's formats, once.
func (m *Machine) sayWire(p string) {
	w := m.peerWire(p)
	switch {
	case w.advertised:
		r := fmt.Sprintf("%d..%d", w.lo, w.hi)
		if w.lo == w.hi {
			r = fmt.Sprintf("%d", w.lo)
		}
		m.sayWireOf(p, r, m.sendVersion(p) != 0)
	case w.heard != 0:
		m.sayWireOf(p, fmt.Sprintf("%d", w.heard), true)
	}
}

func (m *Machine) sayWireOf(p, formats string, ok bool) {
	w := m.peerWire(p)
	lo, hi := m.wireRange()
	v := m.sendVersion(p)
	said := fmt.Sprintf("%s/%v/%d", formats, ok, v)
	if said == w.said {
		return
	}
	first := w.said == ""
	w.said = said
	noun := "formats"
	if !w.advertised {
		noun = "format"
	}
	switch {
	case !ok:
		m.log.Warn(fmt.Sprintf("cluster: peer %s speaks wire %s %s, this proxy %d..%d: its messages are dropped; upgrade one proxy at a time", p, noun, formats, lo, hi),
			"peer", p)
	case v < hi:
		m.log.Info(fmt.Sprintf("cluster: peer %s speaks wire %s %s: it is sent format %d until it is upgraded", p, noun, formats, v), "peer", p)
	case !first:
		m.log.Info(fmt.Sprintf("cluster: peer %s speaks wire %s %s: it is sent format %d", p, noun, formats, v), "peer", p)
	}
}

// forPeer rewrites payload b (this build's format) in the format peer p
// is sent in; nil when p is sent nothing.
func (m *Machine) forPeer(p string, b []byte) []byte {
	v := m.sendVersion(p)
	if v == 0 {
		return nil
	}
	out, err := transcode(b, v)
	if err != nil {
		m.log.Error("cluster: writing a payload in an older wire format", "peer", p, "format", v, "err", err)
		return nil
	}
	return out
}

// wireView is what Members shows of a peer's formats.
type wireView struct {
	formats string // "5..6" advertised, "5" from its latest payload, "" unknown
	send    uint8  // the format it is sent; 0: none in common
}

// wireViews is wireView for every peer, and for this proxy itself.
func (m *Machine) wireViews() map[string]wireView {
	lo, hi := m.wireRange()
	out := make(map[string]wireView, len(m.others)+1)
	out[m.cfg.Name] = wireView{formats: fmt.Sprintf("%d..%d", lo, hi), send: hi}
	for _, p := range m.others {
		w := m.peerWire(p)
		v := wireView{send: m.sendVersion(p)}
		switch {
		case w.advertised:
			v.formats = fmt.Sprintf("%d..%d", w.lo, w.hi)
		case w.heard != 0:
			v.formats = fmt.Sprintf("%d", w.heard)
		}
		out[p] = v
	}
	return out
}
