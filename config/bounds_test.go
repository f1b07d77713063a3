package config

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// allocs returns the bytes f allocates.
func allocs(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// Hostile nesting, 20,000 levels in ~40-80 KB, is refused with its position
// and costs little: before the bound the toml parser took gigabytes.
func TestDeepNestingRefused(t *testing.T) {
	const n = 20000
	for name, src := range map[string]string{
		"arrays":        "a = " + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n",
		"inline tables": "a = " + strings.Repeat("{b=", n) + "1" + strings.Repeat("}", n) + "\n",
		"dotted key":    strings.Repeat("a.", n) + "b = 1\n",
		"table header":  "[" + strings.Repeat("a.", n) + "b]\n",
		"unclosed":      "x = 1\na = " + strings.Repeat("[{b=", n),
	} {
		t.Run(name, func(t *testing.T) {
			var err error
			alloc := allocs(func() { _, _, err = Parse("deep.toml", []byte(src)) })
			t.Logf("FIGURE %s, %d levels in %d bytes: %.1f MiB allocated", name, n, len(src), float64(alloc)/(1<<20))
			var probs Problems
			if !errors.As(err, &probs) || len(probs) != 1 {
				t.Fatalf("want one problem, got %v", err)
			}
			if p := probs[0]; p.Line < 1 || p.Col < 1 || !strings.Contains(p.Msg, "nested deeper than") {
				t.Errorf("problem %q: want a position and the depth bound", p.Error())
			}
			if alloc > 32<<20 {
				t.Errorf("allocated %d MiB", alloc>>20)
			}
		})
	}
	// The bound leaves real configs far inside it.
	ok := "[[service]]\nname = 'a'\nlisten = ':1'\n[service.health]\nkind = 'exec'\ncommand = ['/bin/true']\n" +
		"[[service.backend]]\nname = 'b'\naddress = 'h:1'\n"
	if _, _, err := Parse("ok.toml", []byte(ok)); err != nil {
		t.Fatal(err)
	}
}

// A file over MaxFileSize is refused before it is read whole, by Load (and
// so by check-config, run and SIGHUP) and by Parse.
func TestFileSizeBound(t *testing.T) {
	big := []byte("# " + strings.Repeat("x", MaxFileSize) + "\n")
	_, _, err := Parse("big.toml", big)
	var probs Problems
	if !errors.As(err, &probs) || len(probs) != 1 || !strings.Contains(probs[0].Error(), "big.toml: file is larger than 256 KiB") {
		t.Fatalf("Parse: %v", err)
	}
	path := filepath.Join(t.TempDir(), "big.toml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil { // sparse: a terabyte nobody should read
		t.Fatal(err)
	}
	f.Close()
	var lerr error
	alloc := allocs(func() { _, _, lerr = Load(path) })
	if !errors.As(lerr, &probs) || len(probs) != 1 || !strings.Contains(probs[0].Error(), "file is larger than 256 KiB") {
		t.Fatalf("Load: %v", lerr)
	}
	if alloc > 8<<20 {
		t.Errorf("Load of a 1 TiB file allocated %d MiB", alloc>>20)
	}
}

// The scanner's work is linear: twice the keys, about twice the memory.
func TestScannerLinear(t *testing.T) {
	gen := func(n int) string {
		var b strings.Builder
		for i := range n {
			b.WriteString("[[service]]\nname = \"s\"\nbackend = [{name = 'b', address = 'h:1'}, {name = 'c'}]\n")
			_ = i
		}
		return b.String()
	}
	small, large := gen(2000), gen(8000)
	a1 := allocs(func() { keyPositions(small) })
	a2 := allocs(func() { keyPositions(large) })
	t.Logf("FIGURE scanner: %d KiB for %d bytes, %d KiB for %d bytes", a1>>10, len(small), a2>>10, len(large))
	if a2 > 8*a1 {
		t.Errorf("4x the input took %.1fx the memory", float64(a2)/float64(a1))
	}
}

// A Check's problems come with the key's position, in file order among the
// others, also when the config has other errors.
func TestChecksReportWithPositions(t *testing.T) {
	src := "[[service]]\nname = \"pg\"\nlisten = \"bad\"\n  [service.hooks]\n  promote = [\"/nope\"]\n  [[service.backend]]\n  name = \"a\"\n  address = \"h:1\"\n"
	check := func(cfg *Config, report func(table, key, msg string, warn bool)) {
		for i, s := range cfg.Services {
			if len(s.Hooks.Promote) > 0 {
				report(indexPath("service", i)+".hooks", "promote", "promote: "+s.Hooks.Promote[0]+": no such file", false)
			}
		}
		report("", "", "a warning of the check", true)
	}
	_, warns, err := Parse("c.toml", []byte(src), check)
	want := "c.toml:3:1: service \"pg\": listen \"bad\": missing port\nc.toml:5:3: service \"pg\" hooks: promote: /nope: no such file"
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	if len(warns) != 2 || warns[1].Msg != "a warning of the check" { // and the one-backend warning
		t.Fatalf("warnings %v", warns)
	}
}
