package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Entries survive a reopen, the list is bounded, the file is compacted
// once it holds twice the bound, and a torn last line is skipped.
func TestJournalPersistsAndBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.jsonl")
	j, err := Open(path, 5)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		svc := "a"
		if i%2 == 1 {
			svc = "b"
		}
		if err := j.Add(Entry{Service: svc, Kind: "record", Epoch: uint64(i + 1), Summary: fmt.Sprint("event ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := j.List("", 0); len(got) != 5 || got[0].Epoch != 8 || got[4].Epoch != 12 {
		t.Fatalf("list after 12 adds with max 5: %+v", got)
	}
	if got := j.List("b", 2); len(got) != 2 || got[0].Epoch != 10 || got[1].Epoch != 12 {
		t.Fatalf("last 2 of b: %+v", got)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n >= 10 {
		t.Errorf("file holds %d lines, want it compacted below twice the bound (10)", n)
	}
	// A torn write at the end (a crash) is skipped.
	if err := os.WriteFile(path, append(data, []byte(`{"time":"2026-12-06T`)...), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err = Open(path, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if got := j.List("", 0); len(got) != 5 || got[4].Epoch != 12 || got[4].Summary != "event 11" || got[4].Time.IsZero() {
		t.Fatalf("after reopen: %+v", got)
	}
	long := strings.Repeat("x", 3*OutputTail)
	if err := j.Add(Entry{Kind: "hook", Output: long + "end"}); err != nil {
		t.Fatal(err)
	}
	if out := j.List("", 1)[0].Output; !strings.HasSuffix(out, "end") || len(out) > OutputTail+len("…") {
		t.Errorf("hook output kept %d bytes, want its last %d", len(out), OutputTail)
	}
}

// Without a path it is memory only.
func TestJournalInMemory(t *testing.T) {
	j, err := Open("", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := j.List("", 0); got == nil || len(got) != 0 {
		t.Errorf("empty history listed as %#v, want an empty list (JSON [])", got)
	}
	for i := range 3 {
		j.Add(Entry{Kind: "target", Summary: fmt.Sprint(i)})
	}
	if got := j.List("", 0); len(got) != 2 || got[0].Summary != "1" {
		t.Fatalf("%+v", got)
	}
	if _, err := Open("", 0); err == nil {
		t.Error("max 0 accepted")
	}
}
