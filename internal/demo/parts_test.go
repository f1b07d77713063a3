package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// The writer's bookkeeping: failed writes are not acknowledged, the first
// good write after the kill is found, and read-back gaps are lost writes.
func TestWriterFill(t *testing.T) {
	var out bytes.Buffer
	tl := newTimeline(&out, time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var w *writer
	w = newWriter(tl, "writer", func(_ context.Context, id int64) error {
		switch id {
		case 5:
			w.markKill(time.Now()) // id 5 was sent before the kill
		case 6, 7:
			return errors.New("connection refused to 127.0.0.1:" + string(rune('0'+id)))
		case 12:
			cancel()
		}
		return nil
	})
	w.Run(ctx)
	select {
	case <-w.Recovered():
	default:
		t.Fatal("recovered not closed after a good write following the kill")
	}
	// Everything acknowledged except 2 (before the kill) and 9 (after).
	found := map[int64]bool{}
	for _, id := range w.IDs() {
		if id != 2 && id != 9 {
			found[id] = true
		}
	}
	r := &result{Killed: time.Now()}
	w.fill(r, found)
	if r.Acked != 10 || r.Errors != 2 || r.AckedAfterKill != 5 {
		t.Errorf("acked %d errors %d after kill %d, want 10, 2, 5", r.Acked, r.Errors, r.AckedAfterKill)
	}
	if r.Lost != 2 || r.LostAfterKill != 1 || r.ReadBack != 8 || len(r.LostIDs) != 2 || r.LostIDs[0] != 2 || r.LostIDs[1] != 9 {
		t.Errorf("lost %d (after kill %d, ids %v), read back %d; want 2 (1, [2 9]), 8", r.Lost, r.LostAfterKill, r.LostIDs, r.ReadBack)
	}
	if err := r.moved(); err == nil {
		t.Error("moved() accepted a run that lost a write acknowledged after the switch")
	}
	// Two messages that differ only in a number are shown once.
	if n := strings.Count(out.String(), "first of its kind"); n != 1 {
		t.Errorf("%d error kinds shown, want 1:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "FIRST GOOD WRITE after the kill: id 8") {
		t.Errorf("first good write not reported as id 8:\n%s", out.String())
	}
}

// pgbench's progress lines are put on the timeline at their own time.
func TestPgbenchProgressLines(t *testing.T) {
	var out bytes.Buffer
	d := &demo{tl: newTimeline(&out, time.Unix(1700000000, 0))}
	d.pgbenchStderr(strings.NewReader(strings.Join([]string{
		"pgbench (15.14 (Debian 15.14-0+deb12u1))",
		"progress: 1700000001.500 s, 523.0 tps, lat 7.603 ms stddev 2.100, 0 failed",
		"pgbench: error: client 3 aborted in command 8 (SQL) of script 0; perhaps the backend died while processing",
	}, "\n")))
	want := []string{
		"t+1.500s  pgbench: 523.0 tps, lat 7.603 ms stddev 2.100, 0 failed",
		"pgbench: error: client 3 aborted in command 8",
		"pgbench: pgbench (15.14",
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("timeline lacks %q:\n%s", w, out.String())
		}
	}
	if strings.Contains(out.String(), "pgbench: pgbench: error") {
		t.Errorf("doubled prefix:\n%s", out.String())
	}
}

// The watcher reads the hook's events, whole lines only, once each.
func TestHookEvents(t *testing.T) {
	var out bytes.Buffer
	path := filepath.Join(t.TempDir(), "events")
	w := &watcher{tl: newTimeline(&out, time.Now()), eventsPath: path, downAt: map[string]time.Time{}, targetAt: map[string]time.Time{}, last: map[string]*adminapi.Service{}}
	killed := time.Now()
	appendEvent(path, "start", "pg_promote() on p2 (%s)", "127.0.0.1:5432")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("123 ok half a li"); err != nil { // a line still being written
		t.Fatal(err)
	}
	f.Close()
	w.readHookEvents()
	w.readHookEvents()
	if len(w.hooks) != 1 || w.hooks[0].Kind != "start" || w.hooks[0].Detail != "pg_promote() on p2 (127.0.0.1:5432)" {
		t.Fatalf("events %+v, want one start", w.hooks)
	}
	// The half line, once whole, is read; it is from 1970, before the kill,
	// so it does not count as this failover's hook.
	f, err = os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("ne\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w.readHookEvents()
	if len(w.hooks) != 2 || w.hooks[1].Kind != "ok" || w.hooks[1].Detail != "half a line" {
		t.Fatalf("events %+v, want start then ok", w.hooks)
	}
	r := &result{Killed: killed, OldTarget: "p1"}
	w.fill(r)
	if r.HookStarted.IsZero() || !r.HookDone.IsZero() {
		t.Errorf("hook started %v done %v; want started only", r.HookStarted, r.HookDone)
	}
}
