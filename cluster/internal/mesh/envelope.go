package mesh

import (
	"encoding/binary"
	"errors"
)

// envelopeVersion is the only envelope layout this build speaks. A peer
// running a later layout is dropped and counted, never misread.
const envelopeVersion = 1

// Envelope kinds keep a node's memberlist meta or a state sync from being
// replayed as a protocol message.
const (
	kindMessage byte = 1 // Send, SendBestEffort, Broadcast
	kindState   byte = 2 // LocalState / MergeRemoteState
	kindMeta    byte = 3 // memberlist node meta (no payload)
)

// Envelope layout, version 1:
//
//	version   u8
//	kind      u8
//	label     u8 length + bytes
//	sender    u8 length + bytes
//	boot id   u64 big endian
//	cfg hash  u8 length + bytes
//	payload   u32 big endian length + bytes (must end the buffer)
const fixedEnvelopeLen = 1 + 1 + 1 + 1 + 8 + 1 + 4

// maxHeaderLen bounds any envelope's header.
const maxHeaderLen = fixedEnvelopeLen + 3*255

// maxMetaLen is memberlist's node meta limit (MetaMaxSize); the meta
// envelope must fit in it, which bounds label, name and hash together.
const maxMetaLen = 512

// Limits on what a Mesh sends and accepts. Payload limits for packets are
// computed per Mesh (they depend on the label and names).
const (
	// MaxReliablePayload bounds a Send payload: protocol messages are small,
	// and a bound keeps a hostile or buggy peer from making us buffer much.
	MaxReliablePayload = 64 << 10
	// MaxStatePayload bounds the full-state sync (LocalState).
	MaxStatePayload = 4 << 20
)

// envelope is a decoded incoming message.
type envelope struct {
	kind       byte
	label      string
	sender     string
	bootID     uint64
	configHash string
	payload    []byte
}

// dropReason says why an incoming envelope was refused.
type dropReason int

const (
	dropNone dropReason = iota
	dropGarbage
	dropWrongLabel
	dropStranger
	dropConfigHash
	dropTooLarge
	dropVersion
	dropOverflow
	dropUnauthenticated
	numDropReasons // keep last
)

func (r dropReason) String() string {
	switch r {
	case dropGarbage:
		return "garbage"
	case dropWrongLabel:
		return "wrong_label"
	case dropStranger:
		return "stranger"
	case dropConfigHash:
		return "config_hash"
	case dropTooLarge:
		return "too_large"
	case dropVersion:
		return "version"
	case dropOverflow:
		return "overflow"
	case dropUnauthenticated:
		return "unauthenticated"
	default:
		return "none"
	}
}

var errEnvelopeField = errors.New("envelope field longer than 255 bytes")

// envelopeHeaderLen is the envelope size without payload.
func envelopeHeaderLen(label, sender, configHash string) int {
	return fixedEnvelopeLen + len(label) + len(sender) + len(configHash)
}

// encodeEnvelope appends an envelope to dst.
func encodeEnvelope(dst []byte, kind byte, label, sender string, bootID uint64, configHash string, payload []byte) ([]byte, error) {
	if len(label) > 255 || len(sender) > 255 || len(configHash) > 255 {
		return nil, errEnvelopeField
	}
	dst = append(dst, envelopeVersion, kind)
	dst = append(dst, byte(len(label)))
	dst = append(dst, label...)
	dst = append(dst, byte(len(sender)))
	dst = append(dst, sender...)
	dst = binary.BigEndian.AppendUint64(dst, bootID)
	dst = append(dst, byte(len(configHash)))
	dst = append(dst, configHash...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, payload...)
	return dst, nil
}

// decodeEnvelope parses buf without copying: the returned strings are
// copies, the payload aliases buf. It checks only the layout; the caller
// checks label, sender and hash.
func decodeEnvelope(buf []byte) (envelope, dropReason) {
	var e envelope
	if len(buf) < 1 {
		return e, dropGarbage
	}
	if buf[0] != envelopeVersion {
		return e, dropVersion
	}
	if len(buf) < fixedEnvelopeLen {
		return e, dropGarbage
	}
	e.kind = buf[1]
	rest := buf[2:]
	var ok bool
	if e.label, rest, ok = readShortString(rest); !ok {
		return e, dropGarbage
	}
	if e.sender, rest, ok = readShortString(rest); !ok {
		return e, dropGarbage
	}
	if len(rest) < 8 {
		return e, dropGarbage
	}
	e.bootID = binary.BigEndian.Uint64(rest)
	rest = rest[8:]
	if e.configHash, rest, ok = readShortString(rest); !ok {
		return e, dropGarbage
	}
	if len(rest) < 4 {
		return e, dropGarbage
	}
	n := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(n) != uint64(len(rest)) {
		// Truncated, or trailing bytes: either way not what was sent.
		return e, dropGarbage
	}
	switch e.kind {
	case kindMessage, kindState, kindMeta:
	default:
		return e, dropGarbage
	}
	e.payload = rest
	return e, dropNone
}

func readShortString(b []byte) (string, []byte, bool) {
	if len(b) < 1 {
		return "", nil, false
	}
	n := int(b[0])
	if len(b) < 1+n {
		return "", nil, false
	}
	return string(b[1 : 1+n]), b[1+n:], true
}
