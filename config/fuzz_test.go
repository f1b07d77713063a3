package config

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// Memory bounds the fuzzers hold: what Parse and the scanner may allocate
// (in total, garbage included) per byte of input, plus a constant. Within
// MaxDepth the toml parser's worst measured was ~520 bytes per byte (inline
// tables nested 8 deep); before the depth bound, 40 KB allocated gigabytes.
const (
	parseAllocPerByte = 1024
	scanAllocPerByte  = 256
	allocSlack        = 16 << 20
)

// hostileSeeds are the shapes that cost the most, at a size the plain test
// run affords.
func hostileSeeds() []string {
	const n = 4 << 10
	return []string{
		"a = " + strings.Repeat("[", n) + strings.Repeat("]", n),
		"a = " + strings.Repeat("{b=", n) + "1" + strings.Repeat("}", n),
		strings.Repeat("a.", n) + "b = 1",
		"[" + strings.Repeat("a.", n) + "b]",
		strings.Repeat("k = {b={b={b={b={b={b={b=1}}}}}}}\n", n/8),
		"a = [" + strings.Repeat("{},", n) + "{}]",
		"a = [" + strings.Repeat("1,", n) + "1]",
		strings.Repeat("[[a]]\n", n),
	}
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// FuzzParse checks that Parse never panics, that a config comes back only
// without errors, that a returned config obeys the rules Parse enforces, and
// that Parse's memory stays linear in the input.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../testdata/*/*.toml")
	files = append(files, "../testdata/example.toml")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"",
		"[[service]]\nname='a'\nlisten=':1'\nbackend=[{name='b',address='h:1'}]",
		"a = \"\"\"\n\\\"\"\"\"\"\n[[service]]",
		"[[service]]\n\"na.me\" = 1\n[service.'health']\n",
		"x = [ [1,2], {a=1}, '''\n''' ]\n",
		"[a.\"b.c\"]\nd = 1979-05-27 07:32:00Z\n",
	} {
		f.Add([]byte(s))
	}
	for _, s := range hostileSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var cfg *Config
		var warns []Problem
		var err error
		alloc := allocated(func() { cfg, warns, err = Parse("f.toml", data) })
		if limit := parseAllocPerByte*uint64(len(data)) + allocSlack; alloc > limit {
			t.Fatalf("Parse of %d bytes allocated %d bytes, bound %d", len(data), alloc, limit)
		}
		lines := strings.Count(string(data), "\n") + 1
		check := func(p Problem) {
			if p.File != "f.toml" || p.Msg == "" || p.Line < 0 || p.Line > lines || p.Col < 0 {
				t.Errorf("bad problem %#v (file has %d lines)", p, lines)
			}
		}
		for _, w := range warns {
			check(w)
			if !w.Warning {
				t.Errorf("error among warnings: %v", w)
			}
		}
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			var probs Problems
			if !errors.As(err, &probs) || len(probs) == 0 {
				t.Fatalf("error %v is not a non-empty Problems", err)
			}
			for _, p := range probs {
				check(p)
			}
			return
		}
		if cfg == nil {
			t.Fatal("nil config without an error")
		}
		checkValid(t, cfg)
	})
}

// checkValid re-checks, independently of validate, the rules a config
// accepted by Parse must obey.
func checkValid(t *testing.T, cfg *Config) {
	t.Helper()
	if len(cfg.Services) == 0 {
		t.Fatal("no services")
	}
	names := map[string]bool{}
	for _, s := range cfg.Services {
		if !validName(s.Name) || names[s.Name] {
			t.Errorf("service name %q invalid or repeated", s.Name)
		}
		names[s.Name] = true
		if checkAddress(s.Listen, addrPortZero) != "" {
			t.Errorf("service %q listen %q", s.Name, s.Listen)
		}
		h := s.Health
		if h.Rise < 1 || h.Fall < 1 || h.Interval <= 0 || h.Timeout <= 0 || h.Timeout >= h.Interval ||
			h.FastInterval <= 0 || h.DownInterval <= 0 {
			t.Errorf("service %q health %+v", s.Name, h)
		}
		if !h.Kind.RoleAware() && s.Role != RoleAny {
			t.Errorf("service %q role %q with kind %q", s.Name, s.Role, h.Kind)
		}
		if h.Kind == KindExec && (len(h.Command) == 0 || h.Command[0] == "") {
			t.Errorf("service %q exec without a command", s.Name)
		}
		if s.ConnectTimeout <= 0 || s.IdleTimeout < 0 || s.SwitchHold < 0 || s.MaxConnections < 0 || s.Hooks.Timeout <= 0 {
			t.Errorf("service %q limits %+v", s.Name, s)
		}
		if len(s.Backends) == 0 {
			t.Errorf("service %q has no backends", s.Name)
		}
		bnames := map[string]bool{}
		for _, b := range s.Backends {
			if !validName(b.Name) || bnames[b.Name] || checkAddress(b.Address, addrNeedHost) != "" || b.Weight < 1 || b.MaxConnections < 0 {
				t.Errorf("service %q backend %+v", s.Name, b)
			}
			bnames[b.Name] = true
		}
	}
	if c := cfg.Cluster; c != nil {
		found := false
		for _, p := range c.Peers {
			found = found || p.Name == c.NodeName
		}
		if !found || c.StateDir == "" || c.LeaseTimeout <= 0 || c.ClockDrift < 0 || c.ClockDrift >= 0.5 ||
			(c.SecretKeyFile == "") != c.Insecure {
			t.Errorf("cluster %+v", c)
		}
	}
}

// FuzzKeyPositions checks the position scanner on any input: it must end
// without panicking and within its memory bound, and on valid TOML within
// MaxDepth it must find every key the toml parser found (compared without
// array indexes, for keys with bare parts).
func FuzzKeyPositions(f *testing.F) {
	files, _ := filepath.Glob("../testdata/*/*.toml")
	files = append(files, "../testdata/example.toml")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("a = [\n{ b = 1, c.d = { e = [1, {f = 2}] } },\n]\n[[x.y]]\n[x.y.z]\nw = '''\n'''"))
	for _, s := range hostileSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s *scanner
		alloc := allocated(func() { s = keyPositions(string(data)) })
		if limit := scanAllocPerByte*uint64(len(data)) + allocSlack; alloc > limit {
			t.Fatalf("scan of %d bytes allocated %d bytes, bound %d", len(data), alloc, limit)
		}
		pos := s.paths()
		for path, off := range pos {
			if off < 0 || off > len(data) {
				t.Fatalf("%s at offset %d of %d", path, off, len(data))
			}
		}
		if _, _, deep := s.tooDeep(); deep {
			return // Parse stops here; the rest was not scanned
		}
		md, err := toml.Decode(string(data), new(map[string]any))
		if err != nil {
			return
		}
		found := map[string]bool{}
		for path := range pos {
			found[stripIndexes(path)] = true
		}
	keys:
		for _, k := range md.Keys() {
			for _, part := range k {
				if !isBareKey(part) {
					continue keys
				}
			}
			if !found[k.String()] {
				t.Errorf("key %s has no position", k)
			}
		}
	})
}
