package cluster

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

const (
	stateFile   = "state"
	nodeIDFile  = "node-id"
	lockFile    = "lock"
	stateMagic  = "QPST"
	stateFormat = 3 // 2: values carry the fenced set; 3: and paused; 1 and 2 are still read
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptState reports a state file that cannot be trusted. The proxy
// must not start on it: restore the file, or empty state_dir so that the
// proxy starts recovering and learns its state from its peers.
var ErrCorruptState = errors.New("corrupt state file")

// FileStore is the Store of a running proxy: one state file in state_dir,
// replaced atomically (write a temporary file, fsync, rename, fsync the
// directory), a node id file, and a lock file held with flock for the
// life of the process so that two processes never share a state_dir.
type FileStore struct {
	dir    string
	lock   *os.File
	nodeID string
	saved  State
}

var _ Store = (*FileStore)(nil)

// OpenFileStore creates dir if needed, locks it and reads or creates the
// node id. Close releases the lock.
func OpenFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir %q: %w", dir, err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state_dir %q: lock file: %w", dir, err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("state_dir %q is in use by another process: %w", dir, err)
	}
	s := &FileStore{dir: dir, lock: lf}
	id, err := s.loadNodeID()
	if err != nil {
		lf.Close()
		return nil, err
	}
	s.nodeID = id
	return s, nil
}

func (s *FileStore) loadNodeID() (string, error) {
	p := filepath.Join(s.dir, nodeIDFile)
	b, err := os.ReadFile(p)
	if err == nil {
		id := string(b)
		if len(id) != 32 {
			return "", fmt.Errorf("state_dir %q: node id file: %w: bad length %d", s.dir, ErrCorruptState, len(id))
		}
		if _, err := hex.DecodeString(id); err != nil {
			return "", fmt.Errorf("state_dir %q: node id file: %w: %v", s.dir, ErrCorruptState, err)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("state_dir %q: node id: %w", s.dir, err)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("state_dir %q: node id: %w", s.dir, err)
	}
	id := hex.EncodeToString(raw[:])
	if err := s.writeAtomic(nodeIDFile, []byte(id)); err != nil {
		return "", err
	}
	return id, nil
}

// Close releases the state_dir lock.
func (s *FileStore) Close() error { return s.lock.Close() }

// Load reads the state file; a missing file gives a State with Synced
// false (a new or emptied state_dir).
func (s *FileStore) Load() (State, error) {
	p := filepath.Join(s.dir, stateFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		st := State{NodeID: s.nodeID, Services: map[string]ServiceState{}}
		s.saved = st.clone()
		return st, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("state file %q: %w", p, err)
	}
	st, err := decodeState(b)
	if err != nil {
		return State{}, fmt.Errorf("state file %q: %w: %v", p, ErrCorruptState, err)
	}
	st.NodeID = s.nodeID
	s.saved = st.clone()
	return st, nil
}

// Save replaces the state file atomically and durably. It refuses any
// save that would lower an epoch it has saved.
func (s *FileStore) Save(st State) error {
	for name, old := range s.saved.Services {
		n, ok := st.Services[name]
		if !ok {
			n = ServiceState{}
		}
		if n.Record.Epoch < old.Record.Epoch || n.MaxVoted < old.MaxVoted || n.Accepted.Epoch < old.Accepted.Epoch {
			return fmt.Errorf("service %q: refusing to save a lower epoch (record %d<%d, voted %d<%d, accepted %d<%d)",
				name, n.Record.Epoch, old.Record.Epoch, n.MaxVoted, old.MaxVoted, n.Accepted.Epoch, old.Accepted.Epoch)
		}
	}
	if err := s.writeAtomic(stateFile, encodeState(st)); err != nil {
		return err
	}
	s.saved = st.clone()
	return nil
}

func (s *FileStore) writeAtomic(name string, data []byte) error {
	tmp := filepath.Join(s.dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("state_dir %q: %w", s.dir, err)
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("state_dir %q: writing %s: %w", s.dir, name, err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		return fmt.Errorf("state_dir %q: %w", s.dir, err)
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("state_dir %q: %w", s.dir, err)
	}
	serr = d.Sync()
	cerr = d.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("state_dir %q: syncing directory: %w", s.dir, err)
	}
	return nil
}

// encodeState writes magic, format, the fields and a CRC-32C trailer.
func encodeState(st State) []byte {
	e := &enc{b: append(make([]byte, 0, 256), stateMagic...)}
	e.u8(stateFormat)
	e.bool(st.Synced)
	names := make([]string, 0, len(st.Services))
	for n := range st.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	e.b = binary.BigEndian.AppendUint32(e.b, uint32(len(names)))
	for _, n := range names {
		ss := st.Services[n]
		e.str(n)
		e.record(ss.Record)
		e.u64(ss.MaxVoted)
		e.str(ss.VotedFor)
		e.ballot(ss.Accepted)
		e.ballot(ss.PrevAccepted)
		e.u64(ss.Intent.Epoch)
		e.str(ss.Intent.Fence)
		e.str(ss.Intent.Promote)
		e.bool(ss.Intent.Done)
	}
	return binary.BigEndian.AppendUint32(e.b, crc32.Checksum(e.b, castagnoli))
}

func decodeState(b []byte) (State, error) {
	if len(b) < len(stateMagic)+1+4 || string(b[:len(stateMagic)]) != stateMagic {
		return State{}, errors.New("not a quorumproxy state file")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return State{}, errors.New("checksum mismatch")
	}
	v := body[len(stateMagic)]
	if v != stateFormat && v != 1 && v != 2 {
		return State{}, fmt.Errorf("unknown format %d", v)
	}
	d := &dec{b: body[len(stateMagic)+1:]}
	record, ballot := d.record, d.ballot
	switch v {
	case 2:
		// format 2 had no paused flag: nothing was paused
		value2 := func() Value { return Value{Primary: d.str(), Fenced: d.fenced(), Since: d.u64()} }
		record = func() Record { return Record{Epoch: d.u64(), Value: value2()} }
		ballot = func() Ballot { return Ballot{Epoch: d.u64(), Value: value2()} }
	case 1:
		// format 1 had no fenced set: a value was its primary alone
		record = func() Record { return Record{Epoch: d.u64(), Value: Value{Primary: d.str()}} }
		ballot = func() Ballot { return Ballot{Epoch: d.u64(), Value: Value{Primary: d.str()}} }
	}
	st := State{Synced: d.bool(), Services: map[string]ServiceState{}}
	if len(d.b) < 4 {
		return State{}, errShort
	}
	n := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	for i := uint32(0); i < n && d.err == nil; i++ {
		name := d.str()
		var ss ServiceState
		ss.Record = record()
		ss.MaxVoted = d.u64()
		ss.VotedFor = d.str()
		ss.Accepted = ballot()
		ss.PrevAccepted = ballot()
		ss.Intent.Epoch = d.u64()
		ss.Intent.Fence = d.str()
		ss.Intent.Promote = d.str()
		ss.Intent.Done = d.bool()
		st.Services[name] = ss
	}
	if err := d.finish(); err != nil {
		return State{}, err
	}
	return st, nil
}
