package cluster

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func sampleState() State {
	return State{Synced: true, Services: map[string]ServiceState{
		"db": {Record: Record{Epoch: 7, Value: Value{Primary: "pg-b"}}, MaxVoted: 8, VotedFor: "proxy-2",
			Accepted: Ballot{Epoch: 7, Value: Value{Primary: "pg-b"}}, PrevAccepted: Ballot{Epoch: 5, Value: Value{Primary: "pg-a"}},
			Intent: HookIntent{Epoch: 7, Fence: "pg-a", Promote: "pg-b"}},
		"cache": {Record: Record{Epoch: 1, Value: Value{Primary: "r1", Fenced: "r2", Since: 1, Paused: true}}},
	}}
}

// A state file of format 2 (before values carried the paused flag), as a
// proxy of the version before writes it, is read: nothing paused.
func TestStateFormat2Read(t *testing.T) {
	want := sampleState()
	e := &enc{b: []byte(stateMagic)}
	e.u8(2)
	e.bool(want.Synced)
	e.b = binary.BigEndian.AppendUint32(e.b, 2)
	value2 := func(v Value) { e.str(v.Primary); e.str16(string(v.Fenced)); e.u64(v.Since) }
	for _, n := range []string{"cache", "db"} {
		ss := want.Services[n]
		e.str(n)
		e.u64(ss.Record.Epoch)
		value2(ss.Record.Value)
		e.u64(ss.MaxVoted)
		e.str(ss.VotedFor)
		e.u64(ss.Accepted.Epoch)
		value2(ss.Accepted.Value)
		e.u64(ss.PrevAccepted.Epoch)
		value2(ss.PrevAccepted.Value)
		e.u64(ss.Intent.Epoch)
		e.str(ss.Intent.Fence)
		e.str(ss.Intent.Promote)
		e.bool(ss.Intent.Done)
	}
	b := binary.BigEndian.AppendUint32(e.b, crc32.Checksum(e.b, castagnoli))
	got, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	c := want.Services["cache"]
	c.Record.Paused = false
	if got.Services["db"] != want.Services["db"] || got.Services["cache"] != c {
		t.Errorf("format 2 read as %+v", got.Services)
	}
}

func TestFileStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if st.Synced || len(st.Services) != 0 || len(st.NodeID) != 32 {
		t.Fatalf("fresh store: got %+v, want empty, unsynced, with a node id", st)
	}
	want := sampleState()
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	id := st.NodeID
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got.NodeID != id {
		t.Errorf("node id changed across opens: %q then %q", id, got.NodeID)
	}
	if !got.Synced || len(got.Services) != 2 || got.Services["db"] != want.Services["db"] || got.Services["cache"] != want.Services["cache"] {
		t.Errorf("reloaded state = %+v, want %+v", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile+".tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
}

func TestFileStoreRefusesLowerEpochs(t *testing.T) {
	s, err := OpenFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(sampleState()); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*ServiceState){
		"record":   func(ss *ServiceState) { ss.Record.Epoch = 6 },
		"voted":    func(ss *ServiceState) { ss.MaxVoted = 7 },
		"accepted": func(ss *ServiceState) { ss.Accepted.Epoch = 6 },
	} {
		st := sampleState()
		ss := st.Services["db"]
		mut(&ss)
		st.Services["db"] = ss
		if err := s.Save(st); err == nil {
			t.Errorf("lowering %s was saved", name)
		}
	}
	st := sampleState()
	delete(st.Services, "db")
	if err := s.Save(st); err == nil {
		t.Error("dropping a service with epochs was saved")
	}
}

func TestFileStoreCorruptStopsStart(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(sampleState()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	p := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]byte{
		"flipped bit": func() []byte { c := append([]byte(nil), b...); c[10] ^= 1; return c }(),
		"truncated":   b[:len(b)/2],
		"empty":       {},
		"foreign":     []byte("hello, world"),
	} {
		if err := os.WriteFile(p, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenFileStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Load()
		s.Close()
		if !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s state file: Load error = %v, want ErrCorruptState", name, err)
		}
		cfg := withLease(Config{Name: "a", Peers: []string{"a"}}, time.Second)
		s2, _ := OpenFileStore(dir)
		_, err = NewMachine(cfg, BootClock{}, nopTransport{}, s2)
		s2.Close()
		if !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s state file: NewMachine error = %v, want ErrCorruptState", name, err)
		}
	}
}

func TestFileStoreLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := OpenFileStore(dir); err == nil {
		s2.Close()
		t.Fatal("a second process could open a locked state_dir")
	}
}

func TestBootClockMonotonic(t *testing.T) {
	c := BootClock{}
	a := c.Now()
	b := c.Now()
	if a <= 0 || b < a {
		t.Fatalf("CLOCK_BOOTTIME went %v then %v", a, b)
	}
}

type nopTransport struct{}

func (nopTransport) Send(string, []byte) error      { return nil }
func (nopTransport) Broadcast(string, []byte) error { return nil }
