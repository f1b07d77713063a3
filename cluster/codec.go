package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// MaxMessageSize bounds the payloads that travel in one UDP packet
// (observations, lease requests and answers), with the transport's
// envelope and encryption overhead (memberlist's 1400-byte packets leave
// about 1150 bytes after label, encryption and envelope).
const MaxMessageSize = 1024

// MaxReliableSize bounds the payloads sent reliably (over TCP): proposals,
// votes, accepts, commits and sync. A vote carries four values, each of
// which may list every backend as fenced.
const MaxReliableSize = 16 << 10

// MaxBatchSize bounds a batch of reliable payloads (the mesh takes 64 KiB).
// A lossy batch stays within MaxMessageSize.
const MaxBatchSize = 60 << 10

// limit is the largest payload of type t.
func (t msgType) limit() int {
	switch t {
	case msgObservation, msgLeaseReq, msgLeaseAck:
		return MaxMessageSize
	case msgBatch:
		return MaxBatchSize
	}
	return MaxReliableSize
}

// Payload format versions (the second byte of every payload): 2 values
// carry the fenced set; 3 observations carry the lag in time; 4 batches;
// 5 values carry paused; 6 observations carry positions, synchronous
// standbys and upstreams.
//
// A proxy speaks every format from wireMin to wireMax: it decodes any of
// them, and sends each peer the highest both speak (wire.go), so proxies
// of two adjacent builds share a cluster during a rolling upgrade. A
// format below 5 is not spoken: without the paused flag, a proxy could
// neither honour a pause nor carry it on in the values it votes for.
const (
	wireMin = 5
	wireMax = 6
)

// wireSpoken reports whether this build reads and writes format v.
func wireSpoken(v uint8) bool { return v >= wireMin && v <= wireMax }

// msgType is the first byte of every payload. Add new types only at the end.
type msgType uint8

const (
	msgInvalid     msgType = iota
	msgObservation         // a proxy's view of one service's backends
	msgPropose             // a vote request for (service, epoch, value)
	msgVote                // the answer to a proposal
	msgCommit              // a committed record
	msgLeaseReq            // a lease request for some services
	msgLeaseAck            // the answer to a lease request
	msgSyncReq             // a recovering proxy asks for state
	msgSyncReply           // the answer to a sync request
	msgAccept              // phase 2: accept (service, epoch, value)
	msgAccepted            // the answer to an accept
	msgBatch               // several payloads of one step for one peer
)

// proposal kinds decide which check a voter applies.
type kind uint8

const (
	kindFailover      kind = iota + 1 // From is down: voter checks From down
	kindBootstrap                     // first primary: voter checks Value is its best up backend
	kindSwitchover                    // operator move: voter checks Value up
	kindReaffirm                      // same primary again (liveness): voter checks Value up
	kindForced                        // value forced by an earlier vote: no check
	kindPromoteFailed                 // From's promote hook failed: voter checks Value up
	kindFence                         // operator fences From: voter checks a new primary up
	kindUnfence                       // operator unfences From: no check
	kindPause                         // operator pauses: the same value, paused
	kindResume                        // operator resumes: the same value, not paused
)

func (k kind) String() string {
	switch k {
	case kindFailover:
		return "failover"
	case kindBootstrap:
		return "bootstrap"
	case kindSwitchover:
		return "switchover"
	case kindReaffirm:
		return "reaffirm"
	case kindForced:
		return "forced"
	case kindPromoteFailed:
		return "promote-failed"
	case kindFence:
		return "fence"
	case kindUnfence:
		return "unfence"
	case kindPause:
		return "pause"
	case kindResume:
		return "resume"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

type obsEntry struct {
	Backend string
	Obs     Observation
}

type obsMsg struct {
	Service   string
	Boot, Seq uint64
	Entries   []obsEntry
}

type proposeMsg struct {
	Service string
	Epoch   uint64
	Value   Value
	Kind    kind
	From    string // the primary being replaced (failover)
	Base    uint64 // the proposer's record epoch
}

// voteMsg answers a proposal (phase 1); the voter's state rides along so a
// refused proposer learns records and earlier votes.
type voteMsg struct {
	Service    string
	Epoch      uint64
	Value      Value
	Granted    bool
	Recovering bool
	Prev       Ballot // the voter's accepted ballot before this vote (granted)
	MaxVoted   uint64
	Accepted   Ballot
	Record     Record
}

type acceptMsg struct {
	Service string
	Epoch   uint64
	Value   Value
}

type acceptedMsg struct {
	Service  string
	Epoch    uint64
	Value    Value
	OK       bool
	MaxVoted uint64
	Accepted Ballot
	Record   Record
}

type commitMsg struct {
	Service string
	Record  Record
}

// leaseEntry asks for a lease at the requester's record, which rides
// along so that a peer that missed the commit adopts it.
type leaseEntry struct {
	Service string
	Record  Record
}

type leaseReqMsg struct {
	Boot, Counter uint64
	Entries       []leaseEntry
}

type leaseAckEntry struct {
	Service  string
	Epoch    uint64
	OK       bool
	Record   Record
	MaxVoted uint64
	Accepted Ballot
}

type leaseAckMsg struct {
	Boot, Counter uint64
	Entries       []leaseAckEntry
}

type syncReqMsg struct {
	Boot uint64
}

type syncEntry struct {
	Service  string
	Record   Record
	MaxVoted uint64
	Accepted Ballot
}

type syncReplyMsg struct {
	Boot       uint64
	Recovering bool
	More       bool // more payloads of this reply follow
	Entries    []syncEntry
}

// enc appends fixed-width big-endian fields and length-prefixed strings,
// in format v.
type enc struct {
	b []byte
	v uint8
}

func newEnc(t msgType, v uint8) *enc { return &enc{b: append(make([]byte, 0, 128), byte(t), v), v: v} }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// str writes a string of at most 255 bytes; longer names are rejected by
// config validation, so truncation here only guards the format.
func (e *enc) str(s string) {
	if len(s) > 255 {
		s = s[:255]
	}
	e.u8(uint8(len(s)))
	e.b = append(e.b, s...)
}

// str16 writes a string of up to 65535 bytes (a fenced set); the payload
// size bound rejects what does not fit.
func (e *enc) str16(s string) {
	s = s[:min(len(s), 0xffff)]
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(s)))
	e.b = append(e.b, s...)
}
func (e *enc) value(v Value) {
	e.str(v.Primary)
	e.str16(string(v.Fenced))
	e.u64(v.Since)
	e.bool(v.Paused)
}
func (e *enc) record(r Record) { e.u64(r.Epoch); e.value(r.Value) }
func (e *enc) ballot(b Ballot) { e.u64(b.Epoch); e.value(b.Value) }

// dec reads what enc wrote, in format v; the first error sticks.
type dec struct {
	b   []byte
	v   uint8
	err error
}

var errShort = errors.New("truncated payload")

func (d *dec) u8() uint8 {
	if d.err != nil || len(d.b) < 1 {
		d.err = errShort
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}
func (d *dec) u64() uint64 {
	if d.err != nil || len(d.b) < 8 {
		d.err = errShort
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}
func (d *dec) bool() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	if d.err == nil {
		d.err = errors.New("bad boolean")
	}
	return false
}
func (d *dec) str() string {
	n := int(d.u8())
	if d.err != nil || len(d.b) < n {
		d.err = errShort
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
func (d *dec) str16() string {
	if d.err != nil || len(d.b) < 2 {
		d.err = errShort
		return ""
	}
	n := int(binary.BigEndian.Uint16(d.b))
	if len(d.b) < 2+n {
		d.err = errShort
		return ""
	}
	s := string(d.b[2 : 2+n])
	d.b = d.b[2+n:]
	return s
}

// fenced reads a fenced set and insists on its canonical form: Values are
// compared with ==, so two spellings of one set must not exist.
func (d *dec) fenced() Fenced {
	s := d.str16()
	if d.err != nil || s == "" {
		return ""
	}
	l := strings.Split(s, ",")
	for i, b := range l {
		if b == "" || i > 0 && l[i-1] >= b {
			d.err = errors.New("fenced set not in canonical form")
			return ""
		}
	}
	return Fenced(s)
}
func (d *dec) value() Value {
	return Value{Primary: d.str(), Fenced: d.fenced(), Since: d.u64(), Paused: d.bool()}
}
func (d *dec) record() Record { return Record{Epoch: d.u64(), Value: d.value()} }
func (d *dec) ballot() Ballot { return Ballot{Epoch: d.u64(), Value: d.value()} }

// count reads an entry count and bounds it by the bytes left, so garbage
// cannot make the decoder allocate much.
func (d *dec) count(minEntry int) int {
	n := int(d.u8())
	if d.err == nil && n*minEntry > len(d.b) {
		d.err = errShort
		return 0
	}
	return n
}
func (d *dec) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New("trailing bytes")
	}
	return d.err
}

func (e *enc) done() ([]byte, error) {
	if limit := msgType(e.b[0]).limit(); len(e.b) > limit {
		return nil, fmt.Errorf("message type %d is %d bytes, above the %d-byte limit", e.b[0], len(e.b), limit)
	}
	return e.b, nil
}

func encodeObs(m obsMsg) ([]byte, error) { return m.encode(wireMax) }

func (m obsMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgObservation, v)
	e.str(m.Service)
	e.u64(m.Boot)
	e.u64(m.Seq)
	e.u8(uint8(len(m.Entries)))
	for _, x := range m.Entries {
		e.str(x.Backend)
		e.bool(x.Obs.Up)
		e.u8(uint8(x.Obs.Role))
		e.u64(uint64(x.Obs.LagBytes))
		e.u64(uint64(x.Obs.Lag))
		if e.v >= 6 {
			e.u64(uint64(x.Obs.Position))
			e.bool(x.Obs.PositionFresh)
			e.u64(x.Obs.SyncMask)
			e.str(x.Obs.Upstream)
		}
	}
	return e.done()
}

func encodePropose(m proposeMsg) ([]byte, error) { return m.encode(wireMax) }

func (m proposeMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgPropose, v)
	e.str(m.Service)
	e.u64(m.Epoch)
	e.value(m.Value)
	e.u8(uint8(m.Kind))
	e.str(m.From)
	e.u64(m.Base)
	return e.done()
}

func encodeVote(m voteMsg) ([]byte, error) { return m.encode(wireMax) }

func (m voteMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgVote, v)
	e.str(m.Service)
	e.u64(m.Epoch)
	e.value(m.Value)
	e.bool(m.Granted)
	e.bool(m.Recovering)
	e.ballot(m.Prev)
	e.u64(m.MaxVoted)
	e.ballot(m.Accepted)
	e.record(m.Record)
	return e.done()
}

func encodeAccept(m acceptMsg) ([]byte, error) { return m.encode(wireMax) }

func (m acceptMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgAccept, v)
	e.str(m.Service)
	e.u64(m.Epoch)
	e.value(m.Value)
	return e.done()
}

func encodeAccepted(m acceptedMsg) ([]byte, error) { return m.encode(wireMax) }

func (m acceptedMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgAccepted, v)
	e.str(m.Service)
	e.u64(m.Epoch)
	e.value(m.Value)
	e.bool(m.OK)
	e.u64(m.MaxVoted)
	e.ballot(m.Accepted)
	e.record(m.Record)
	return e.done()
}

func encodeCommit(m commitMsg) ([]byte, error) { return m.encode(wireMax) }

func (m commitMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgCommit, v)
	e.str(m.Service)
	e.record(m.Record)
	return e.done()
}

func encodeLeaseReq(m leaseReqMsg) ([]byte, error) { return m.encode(wireMax) }

func (m leaseReqMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgLeaseReq, v)
	e.u64(m.Boot)
	e.u64(m.Counter)
	e.u8(uint8(len(m.Entries)))
	for _, x := range m.Entries {
		e.str(x.Service)
		e.record(x.Record)
	}
	return e.done()
}

func encodeLeaseAck(m leaseAckMsg) ([]byte, error) { return m.encode(wireMax) }

func (m leaseAckMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgLeaseAck, v)
	e.u64(m.Boot)
	e.u64(m.Counter)
	e.u8(uint8(len(m.Entries)))
	for _, x := range m.Entries {
		e.str(x.Service)
		e.u64(x.Epoch)
		e.bool(x.OK)
		e.record(x.Record)
		e.u64(x.MaxVoted)
		e.ballot(x.Accepted)
	}
	return e.done()
}

func encodeSyncReq(m syncReqMsg) ([]byte, error) { return m.encode(wireMax) }

func (m syncReqMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgSyncReq, v)
	e.u64(m.Boot)
	return e.done()
}

func encodeSyncReply(m syncReplyMsg) ([]byte, error) { return m.encode(wireMax) }

func (m syncReplyMsg) encode(v uint8) ([]byte, error) {
	e := newEnc(msgSyncReply, v)
	e.u64(m.Boot)
	e.bool(m.Recovering)
	e.bool(m.More)
	e.u8(uint8(len(m.Entries)))
	for _, x := range m.Entries {
		e.str(x.Service)
		e.record(x.Record)
		e.u64(x.MaxVoted)
		e.ballot(x.Accepted)
	}
	return e.done()
}

// errVersion marks a payload of a format version this build does not speak.
var errVersion = errors.New("unsupported payload version")

// header checks a payload's size and version and returns its type and a
// decoder positioned after the header.
func header(b []byte) (msgType, *dec, error) {
	if len(b) < 2 {
		return 0, nil, errShort
	}
	if limit := msgType(b[0]).limit(); len(b) > limit {
		return 0, nil, fmt.Errorf("payload of %d bytes above the limit of %d", len(b), limit)
	}
	if !wireSpoken(b[1]) {
		return 0, nil, fmt.Errorf("format %d, this proxy reads %d..%d: %w", b[1], wireMin, wireMax, errVersion)
	}
	return msgType(b[0]), &dec{b: b[2:], v: b[1]}, nil
}

func decObs(d *dec) obsMsg {
	m := obsMsg{Service: d.str(), Boot: d.u64(), Seq: d.u64()}
	minEntry := 37
	if d.v < 6 {
		minEntry = 19
	}
	n := d.count(minEntry)
	m.Entries = make([]obsEntry, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		var x obsEntry
		x.Backend = d.str()
		x.Obs.Up = d.bool()
		x.Obs.Role = Role(d.u8())
		x.Obs.LagBytes = int64(d.u64())
		x.Obs.Lag = time.Duration(d.u64())
		if d.v >= 6 {
			x.Obs.Position = int64(d.u64())
			x.Obs.PositionFresh = d.bool()
			x.Obs.SyncMask = d.u64()
			x.Obs.Upstream = d.str()
		} else {
			// Format 5 has none of these: unknown, which the rules read as
			// "this view tells nothing" (position none, not fresh; no
			// synchronous standbys known; upstream unknown), never as a
			// fact that would rank, refuse or accept a candidate.
			x.Obs.Position = -1
		}
		if x.Obs.Role > RoleReplica && d.err == nil {
			d.err = errors.New("bad role")
		}
		m.Entries = append(m.Entries, x)
	}
	return m
}

func decPropose(d *dec) proposeMsg {
	m := proposeMsg{Service: d.str(), Epoch: d.u64(), Value: d.value(), Kind: kind(d.u8()), From: d.str(), Base: d.u64()}
	if (m.Kind < kindFailover || m.Kind > kindResume) && d.err == nil {
		d.err = errors.New("bad proposal kind")
	}
	return m
}

func decVote(d *dec) voteMsg {
	return voteMsg{Service: d.str(), Epoch: d.u64(), Value: d.value(), Granted: d.bool(), Recovering: d.bool(),
		Prev: d.ballot(), MaxVoted: d.u64(), Accepted: d.ballot(), Record: d.record()}
}

func decAccept(d *dec) acceptMsg {
	return acceptMsg{Service: d.str(), Epoch: d.u64(), Value: d.value()}
}

func decAccepted(d *dec) acceptedMsg {
	return acceptedMsg{Service: d.str(), Epoch: d.u64(), Value: d.value(), OK: d.bool(), MaxVoted: d.u64(),
		Accepted: d.ballot(), Record: d.record()}
}

func decCommit(d *dec) commitMsg { return commitMsg{Service: d.str(), Record: d.record()} }

func decLeaseReq(d *dec) leaseReqMsg {
	m := leaseReqMsg{Boot: d.u64(), Counter: d.u64()}
	n := d.count(10)
	m.Entries = make([]leaseEntry, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Entries = append(m.Entries, leaseEntry{Service: d.str(), Record: d.record()})
	}
	return m
}

func decLeaseAck(d *dec) leaseAckMsg {
	m := leaseAckMsg{Boot: d.u64(), Counter: d.u64()}
	n := d.count(36)
	m.Entries = make([]leaseAckEntry, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Entries = append(m.Entries, leaseAckEntry{Service: d.str(), Epoch: d.u64(), OK: d.bool(), Record: d.record(),
			MaxVoted: d.u64(), Accepted: d.ballot()})
	}
	return m
}

func decSyncReq(d *dec) syncReqMsg { return syncReqMsg{Boot: d.u64()} }

func decSyncReply(d *dec) syncReplyMsg {
	m := syncReplyMsg{Boot: d.u64(), Recovering: d.bool(), More: d.bool()}
	n := d.count(27)
	m.Entries = make([]syncEntry, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Entries = append(m.Entries, syncEntry{Service: d.str(), Record: d.record(), MaxVoted: d.u64(), Accepted: d.ballot()})
	}
	return m
}

// decode parses a payload into one of the message structs (for tests and
// traces; Machine.Step decodes without boxing).
func decode(b []byte) (any, error) {
	t, d, err := header(b)
	if err != nil {
		return nil, err
	}
	var out any
	switch t {
	case msgObservation:
		out = decObs(d)
	case msgPropose:
		out = decPropose(d)
	case msgVote:
		out = decVote(d)
	case msgCommit:
		out = decCommit(d)
	case msgLeaseReq:
		out = decLeaseReq(d)
	case msgLeaseAck:
		out = decLeaseAck(d)
	case msgSyncReq:
		out = decSyncReq(d)
	case msgSyncReply:
		out = decSyncReply(d)
	case msgAccept:
		out = decAccept(d)
	case msgAccepted:
		out = decAccepted(d)
	case msgBatch:
		var xs batchMsg
		for _, p := range decBatch(d) {
			x, err := decode(p)
			if err != nil {
				return nil, fmt.Errorf("batch: %w", err)
			}
			xs = append(xs, x)
		}
		out = xs
	default:
		return nil, fmt.Errorf("unknown message type %d", b[0])
	}
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("message type %d: %w", b[0], err)
	}
	return out, nil
}

// wireMsg is a decoded payload, which can be written in any format spoken.
type wireMsg interface {
	encode(v uint8) ([]byte, error)
}

// transcode rewrites payload b, of any format spoken, in format v (b
// itself when it already is). A field format v lacks is left out; one it
// has and b's format lacks is written as decoding b left it: unknown.
func transcode(b []byte, v uint8) ([]byte, error) {
	if len(b) >= 2 && b[1] == v {
		return b, nil
	}
	if !wireSpoken(v) {
		return nil, fmt.Errorf("format %d: %w", v, errVersion)
	}
	x, err := decode(b)
	if err != nil {
		return nil, err
	}
	return encodeIn(x, v)
}

// encodeIn writes a decoded payload (decode's result) in format v.
func encodeIn(x any, v uint8) ([]byte, error) {
	if bm, ok := x.(batchMsg); ok {
		parts := make([][]byte, 0, len(bm))
		for _, p := range bm {
			b, err := encodeIn(p, v)
			if err != nil {
				return nil, fmt.Errorf("batch: %w", err)
			}
			parts = append(parts, b)
		}
		return encodeBatch(parts, v), nil
	}
	w, ok := x.(wireMsg)
	if !ok {
		return nil, fmt.Errorf("cannot encode a %T", x)
	}
	return w.encode(v)
}

// A batch: type, version, a u16 count, then each payload with a u16
// length. Each payload inside is checked on its own, as if it came alone.
const batchHeader = 2 + 2

func batchEntrySize(b []byte) int { return 2 + len(b) }

// encodeBatch batches parts, which must all be of format v, in format v.
func encodeBatch(parts [][]byte, v uint8) []byte {
	n := batchHeader
	for _, p := range parts {
		n += batchEntrySize(p)
	}
	b := make([]byte, 0, n)
	b = append(b, byte(msgBatch), v)
	b = binary.BigEndian.AppendUint16(b, uint16(len(parts)))
	for _, p := range parts {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	return b
}

// batchMsg is a decoded batch (decode is for tests and tools; the
// machine steps through a batch's payloads one by one).
type batchMsg []any

// decBatch splits a batch into its payloads (sub-slices of d's buffer).
func decBatch(d *dec) [][]byte {
	if d.err != nil || len(d.b) < 2 {
		d.err = errShort
		return nil
	}
	n := int(binary.BigEndian.Uint16(d.b))
	d.b = d.b[2:]
	if n*3 > len(d.b) {
		d.err = errShort
		return nil
	}
	parts := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		if len(d.b) < 2 {
			d.err = errShort
			return nil
		}
		l := int(binary.BigEndian.Uint16(d.b))
		if l < 2 || len(d.b) < 2+l {
			d.err = errShort
			return nil
		}
		parts = append(parts, d.b[2:2+l])
		d.b = d.b[2+l:]
	}
	if err := d.finish(); err != nil {
		return nil
	}
	return parts
}

// Encoded sizes, for splitting long lists over several payloads.
const listHeader = 2 + 8 + 8 + 1 + 2 // type, version, two u64, flags, count

// valueSize is the encoded size of v (enc.value): primary, fenced set,
// since, paused.
func valueSize(v Value) int { return 1 + len(v.Primary) + 2 + len(v.Fenced) + 8 + 1 }

func leaseEntrySize(e leaseEntry) int { return 1 + len(e.Service) + 8 + valueSize(e.Record.Value) }

func leaseAckEntrySize(e leaseAckEntry) int {
	return 1 + len(e.Service) + 8 + 1 + 8 + valueSize(e.Record.Value) + 8 + 8 + valueSize(e.Accepted.Value)
}

func syncEntrySize(e syncEntry) int {
	return 1 + len(e.Service) + 8 + valueSize(e.Record.Value) + 8 + 8 + valueSize(e.Accepted.Value)
}
