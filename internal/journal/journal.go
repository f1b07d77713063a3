// Package journal keeps the proxy's decision history: every committed
// record, hook run (with its exit status and the tail of its output),
// operator action and target change, in a bounded list that a post-mortem
// reads through GET /api/v1/history and `quorumproxy history`. With a
// path it is appended to a file of JSON lines (in state_dir), so it
// survives restarts; the file is rewritten to the last Max entries once it
// holds twice that many. Nothing here decides anything: a write that fails
// is logged by the caller and the entry stays in memory.
package journal

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Entry is one event.
type Entry struct {
	Time    time.Time `json:"time"`
	Service string    `json:"service,omitempty"`
	// Kind is "record" (a new epoch committed or adopted), "hook",
	// "operator", "target" (a lone proxy's target moved) or "reload".
	Kind    string `json:"kind"`
	Epoch   uint64 `json:"epoch,omitempty"`
	Summary string `json:"summary"`
	// A hook's name, how it ended ("exit 0", "exit status 1", ...) and the
	// tail of its output.
	Hook   string `json:"hook,omitempty"`
	Result string `json:"result,omitempty"`
	Output string `json:"output,omitempty"`
	// Remote is the address an operator's request came from.
	Remote string `json:"remote,omitempty"`
}

// OutputTail bounds the output an entry keeps.
const OutputTail = 1024

// Journal is safe for concurrent use.
type Journal struct {
	max  int
	path string

	mu      sync.Mutex
	entries []Entry // oldest first, at most max
	f       *os.File
	lines   int // lines in the file
}

// Open reads the journal at path (the last max entries; a line that does
// not parse, as a torn last write, is skipped) and opens it for appending.
// An empty path keeps the journal in memory only.
func Open(path string, max int) (*Journal, error) {
	if max < 1 {
		return nil, fmt.Errorf("journal: max %d, want at least 1", max)
	}
	j := &Journal{max: max, path: path}
	if path == "" {
		return j, nil
	}
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("journal: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		j.lines++
		var e Entry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			j.keep(e)
		}
	}
	if j.lines >= 2*max {
		if err := j.compact(); err != nil {
			return nil, err
		}
	}
	if j.f == nil {
		if j.f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
	}
	return j, nil
}

func (j *Journal) keep(e Entry) {
	if len(j.entries) == j.max {
		copy(j.entries, j.entries[1:])
		j.entries = j.entries[:j.max-1]
	}
	j.entries = append(j.entries, e)
}

// Add records e (its Time set to now when zero). The error is the file's:
// the entry is kept in memory all the same.
func (j *Journal) Add(e Entry) error {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(e.Output) > OutputTail {
		e.Output = "…" + e.Output[len(e.Output)-OutputTail:]
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.keep(e)
	if j.f == nil {
		return nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if j.lines++; j.lines >= 2*j.max {
		return j.compact()
	}
	return nil
}

// compact rewrites the file to the entries in memory (atomically: a
// crash leaves the old file or the new one).
func (j *Journal) compact() error {
	var buf bytes.Buffer
	for _, e := range j.entries {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		buf.Write(append(b, '\n'))
	}
	tmp, err := os.CreateTemp(filepath.Dir(j.path), ".history-*")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	_, werr := tmp.Write(buf.Bytes())
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := firstErr(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("journal: %w", err)
	}
	if err := os.Rename(tmp.Name(), j.path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("journal: %w", err)
	}
	if j.f != nil {
		j.f.Close()
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		j.f = nil
		return fmt.Errorf("journal: %w", err)
	}
	j.f, j.lines = f, len(j.entries)
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// List returns the last limit entries (all when limit <= 0) about service
// ("" for every service), oldest first.
func (j *Journal) List(service string, limit int) []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := []Entry{} // an empty history is [], not null
	for i := len(j.entries) - 1; i >= 0 && (limit <= 0 || len(out) < limit); i-- {
		if e := j.entries[i]; service == "" || e.Service == service {
			out = append(out, e)
		}
	}
	for a, b := 0, len(out)-1; a < b; a, b = a+1, b-1 {
		out[a], out[b] = out[b], out[a]
	}
	return out
}

// Close closes the file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
