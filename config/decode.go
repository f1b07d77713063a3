package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Bounds on what Parse accepts. A config is a few kilobytes and nests four
// levels at most (service.health.command[0]). The toml parser's cost grows
// much faster than the file with nesting (20,000 levels in 40 KB took
// gigabytes), and within these bounds it allocates at most a few hundred
// bytes per byte of input, so hostile input is refused before it runs.
const (
	// MaxFileSize is the largest config file, in bytes: room for hundreds
	// of services; a hostile file of this size peaks below 100 MB.
	MaxFileSize = 256 << 10
	// MaxDepth bounds how deep keys nest, counting table header parts,
	// dotted key parts, array elements and inline tables together.
	MaxDepth = 10
)

// maxDepth is MaxDepth, for the scanner.
const maxDepth = MaxDepth

// Check is a check of a decoded config that Parse cannot make alone, such
// as whether the files that keys name are there; the caller passes it to
// Load or Parse so that its problems come with positions, in file order,
// among the others. report records a problem about key of the table at
// path, in the decoder's form (`service[0].hooks`, "promote"); a warning
// when warn is set. A Check runs even when the config has other errors, so
// cfg may hold zero values where the file's were invalid.
type Check func(cfg *Config, report func(table, key, msg string, warn bool))

// Load reads and parses the config file at path. See Parse. A file larger
// than MaxFileSize is refused without reading it whole.
func Load(path string, checks ...Check) (*Config, []Problem, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data, checks...)
}

// Parse decodes and validates a config file's contents; filename is used in
// problems only. It returns the config with every default applied and the
// warnings found. If the file has any error, the config is nil and the error
// is a Problems listing every error found (syntax errors stop at the first;
// an integer too large for int64 does not). checks run after validation.
func Parse(filename string, data []byte, checks ...Check) (*Config, []Problem, error) {
	if len(data) > MaxFileSize {
		return nil, nil, Problems{{File: filename, Msg: fmt.Sprintf("file is larger than %d KiB, the most a config may be", MaxFileSize>>10)}}
	}
	scan := keyPositions(string(data))
	if line, col, deep := scan.tooDeep(); deep {
		return nil, nil, Problems{{File: filename, Line: line, Col: col,
			Msg: fmt.Sprintf("keys nested deeper than %d levels (table headers, dotted keys, arrays and inline tables together): not a quorumproxy config", MaxDepth)}}
	}
	// An integer out of range stops the toml parser; read it as 0, report
	// it, and go on, so that every other problem is reported too.
	text := string(data)
	if len(scan.overflows) > 0 {
		b := []byte(text)
		for _, o := range scan.overflows {
			b[o.start] = '0'
			for i := o.start + 1; i < o.end; i++ {
				b[i] = ' '
			}
		}
		text = string(b)
	}
	var raw map[string]any
	if _, err := toml.Decode(text, &raw); err != nil {
		p := Problem{File: filename, Msg: err.Error()}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			p.Line, p.Col, p.Msg = pe.Position.Line, pe.Position.Col, pe.Message
		}
		return nil, nil, Problems{p}
	}

	d := &decoder{file: filename, scan: scan, present: map[string]bool{}, bad: map[string]bool{}}
	cfg := &Config{}
	cfg.setDefaults()
	overflowed := map[string]bool{}
	for _, o := range scan.overflows {
		p := scan.pathOf(o.node)
		overflowed[p] = true
		d.bad[p] = true
		d.probs = append(d.probs, rawProblem{table: parentPath(p), key: lastPart(p),
			msg: fmt.Sprintf("%s: %s is out of range: an integer must fit in 64 bits", lastPart(p), data[o.start:o.end])})
	}
	d.table("", raw, reflect.ValueOf(cfg).Elem())
	d.derive(cfg)
	d.validate(cfg)
	for _, check := range checks {
		check(cfg, func(table, key, msg string, warn bool) {
			d.probs = append(d.probs, rawProblem{table: table, key: key, msg: msg, warning: warn})
		})
	}
	if len(overflowed) > 0 {
		// What validation said of the stand-in 0 is not news.
		kept := d.probs[:0]
		for i, p := range d.probs {
			if i < len(scan.overflows) || !overflowed[joinPath(p.table, p.key)] {
				kept = append(kept, p)
			}
		}
		d.probs = kept
	}
	return d.result(cfg)
}

// lastPart is the last key or index of path: a.b[1] -> [1], a.b -> b.
func lastPart(path string) string {
	return strings.TrimPrefix(path[len(parentPath(path)):], ".")
}

// decoder maps the decoded TOML tree onto the config structs by their toml
// tags. It does this itself rather than through toml.Decode into the
// structs because that stops at the first type mismatch and reports array
// tables without their index; this way every problem is collected and names
// the exact service and backend.
type decoder struct {
	file    string
	scan    *scanner
	present map[string]bool // key paths set by the file
	bad     map[string]bool // key paths whose value could not be decoded
	probs   []rawProblem
}

// rawProblem is a problem before its path is turned into words.
type rawProblem struct {
	table   string // indexed path of the table it is about
	key     string // key in that table, for the position; may be ""
	msg     string
	warning bool
}

func (d *decoder) errorf(table, key, format string, args ...any) {
	d.probs = append(d.probs, rawProblem{table: table, key: key, msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) warnf(table, key, format string, args ...any) {
	d.probs = append(d.probs, rawProblem{table: table, key: key, msg: fmt.Sprintf(format, args...), warning: true})
}

// defaulter is implemented by tables with defaults of their own.
type defaulter interface{ setDefaults() }

var durationType = reflect.TypeFor[time.Duration]()

// table decodes the TOML table m at path into the struct rv.
func (d *decoder) table(path string, m map[string]any, rv reflect.Value) {
	fields := tomlFields(rv.Type())
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		kp := joinPath(path, k)
		idx, ok := fields[k]
		if !ok {
			d.unknownKey(path, k, fields)
			continue
		}
		d.present[kp] = true
		n := len(d.probs)
		d.value(path, k, m[k], rv.Field(idx))
		if len(d.probs) > n {
			d.bad[kp] = true
		}
	}
}

// unknownKey reports key k of table path, with a hint where one helps.
func (d *decoder) unknownKey(path, k string, fields map[string]int) {
	quoted := fmt.Sprintf("%q", k)
	if k == "password" {
		d.errorf(path, k, "unknown key %s: a password is never written in the config; use password_file or password_env", quoted)
		return
	}
	best, bestDist := "", 3
	for f := range fields {
		if dist := editDistance(k, f); dist < bestDist || dist == bestDist && f < best {
			best, bestDist = f, dist
		}
	}
	if best != "" {
		d.errorf(path, k, "unknown key %s (did you mean %q?)", quoted, best)
		return
	}
	d.errorf(path, k, "unknown key %s", quoted)
}

// value decodes TOML value v of key k in table path into rv.
func (d *decoder) value(path, k string, v any, rv reflect.Value) {
	kp := joinPath(path, k)
	t := rv.Type()
	switch {
	case t == durationType:
		switch x := v.(type) {
		case string:
			dur, err := time.ParseDuration(x)
			if err != nil {
				d.errorf(path, k, "%s: invalid duration %q: use a number with a unit, such as \"250ms\" or \"2s\"", k, x)
				return
			}
			rv.SetInt(int64(dur))
		case int64:
			if x != 0 { // an integer would be nanoseconds: almost always a mistake
				d.errorf(path, k, "%s: duration %d has no unit: write a string such as \"%ds\" or \"%dms\"", k, x, x, x)
				return
			}
			rv.SetInt(0)
		default:
			d.typeError(path, k, "a duration string such as \"2s\"", v)
		}
	case t.Kind() == reflect.String:
		x, ok := v.(string)
		if !ok {
			d.typeError(path, k, "a string", v)
			return
		}
		rv.SetString(x)
	case t.Kind() == reflect.Bool:
		x, ok := v.(bool)
		if !ok {
			d.typeError(path, k, "true or false", v)
			return
		}
		rv.SetBool(x)
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		x, ok := v.(int64)
		if !ok {
			d.typeError(path, k, "an integer", v)
			return
		}
		rv.SetInt(x)
	case t.Kind() == reflect.Float64:
		switch x := v.(type) {
		case float64:
			rv.SetFloat(x)
		case int64:
			rv.SetFloat(float64(x))
		default:
			d.typeError(path, k, "a number", v)
		}
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		d.argv(path, k, v, rv)
	case t.Kind() == reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.typeError(path, k, "a table", v)
			return
		}
		if df, ok := rv.Addr().Interface().(defaulter); ok {
			df.setDefaults()
		}
		d.table(kp, m, rv)
	case t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.typeError(path, k, "a table", v)
			return
		}
		p := reflect.New(t.Elem())
		if df, ok := p.Interface().(defaulter); ok {
			df.setDefaults()
		}
		d.table(kp, m, p.Elem())
		rv.Set(p)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		var elems []map[string]any
		switch x := v.(type) {
		case []map[string]any:
			elems = x
		case []any:
			for i, e := range x {
				m, ok := e.(map[string]any)
				if !ok {
					d.errorf(path, k, "%s[%d]: must be a table, not %s", k, i, describe(e))
					return
				}
				elems = append(elems, m)
			}
		default:
			d.typeError(path, k, fmt.Sprintf("an array of tables ([[%s]])", stripIndexes(kp)), v)
			return
		}
		s := reflect.MakeSlice(t, len(elems), len(elems))
		for i, m := range elems {
			el := s.Index(i)
			if df, ok := el.Addr().Interface().(defaulter); ok {
				df.setDefaults()
			}
			d.table(indexPath(kp, i), m, el)
		}
		rv.Set(s)
	default:
		panic(fmt.Sprintf("config: no decoder for field type %s", t)) // a bug in the structs, not in the file
	}
}

// argv decodes an array of strings. A plain string is refused: commands
// never run through a shell, so there is nothing to split it with.
func (d *decoder) argv(path, k string, v any, rv reflect.Value) {
	if s, ok := v.(string); ok {
		d.errorf(path, k, "%s: must be an array of strings (argv), not the string %q: commands never run through a shell; write [\"/path/to/cmd\", \"arg\", ...]", k, s)
		return
	}
	arr, ok := v.([]any)
	if !ok {
		d.typeError(path, k, "an array of strings", v)
		return
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			d.errorf(path, k, "%s[%d]: must be a string, not %s", k, i, describe(e))
			return
		}
		out = append(out, s)
	}
	rv.Set(reflect.ValueOf(out))
}

func (d *decoder) typeError(path, k, want string, v any) {
	d.errorf(path, k, "%s: must be %s, not %s", k, want, describe(v))
}

// describe names a decoded TOML value's type, with the value when short.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 40 {
			return "a string"
		}
		return fmt.Sprintf("the string %q", x)
	case int64:
		return fmt.Sprintf("the integer %d", x)
	case float64:
		return fmt.Sprintf("the float %v", x)
	case bool:
		return fmt.Sprintf("the boolean %v", x)
	case map[string]any:
		return "a table"
	case []map[string]any, []any:
		return "an array"
	case time.Time:
		return "a date/time"
	}
	return fmt.Sprintf("a %T", v)
}

// tomlFields maps toml tag names to field indexes.
func tomlFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("toml"); tag != "" && tag != "-" {
			m[tag] = i
		}
	}
	return m
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// result turns collected problems into words and positions.
func (d *decoder) result(cfg *Config) (*Config, []Problem, error) {
	var errs Problems
	var warns []Problem
	for _, rp := range d.probs {
		p := Problem{File: d.file, Path: d.describePath(cfg, rp.table), Msg: rp.msg, Warning: rp.warning}
		target := rp.table
		if rp.key != "" {
			target = joinPath(rp.table, rp.key)
		}
		p.Line, p.Col = d.scan.lookup(target)
		if p.Warning {
			warns = append(warns, p)
		} else {
			errs = append(errs, p)
		}
	}
	sortProblems(errs)
	sortProblems(warns)
	if len(errs) > 0 {
		return nil, warns, errs
	}
	return cfg, warns, nil
}

// describePath turns an indexed table path into words: service[0].backend[1]
// becomes `service "pg" backend "b2"` (or `service #1 backend #2` without names).
func (d *decoder) describePath(cfg *Config, path string) string {
	if path == "" {
		return ""
	}
	var segs []string
	for p := path; p != ""; p = parentPath(p) {
		segs = append(segs, p)
	}
	slices.Reverse(segs)
	var words []string
	for _, seg := range segs {
		parent := parentPath(seg)
		last := strings.TrimPrefix(strings.TrimPrefix(seg, parent), ".")
		if !strings.HasPrefix(last, "[") {
			words = append(words, last)
			continue
		}
		var i int
		fmt.Sscanf(last, "[%d]", &i)
		if name := d.nameAt(cfg, seg); name != "" {
			words = append(words, fmt.Sprintf("%q", name))
		} else {
			words = append(words, fmt.Sprintf("#%d", i+1))
		}
	}
	return strings.Join(words, " ")
}

// nameAt returns the name of the array element at indexed path seg, if the
// file gave it one.
func (d *decoder) nameAt(cfg *Config, seg string) string {
	var si, bi, pi int
	switch {
	case matchPath(seg, "service[%d].backend[%d]", &si, &bi):
		if si < len(cfg.Services) && bi < len(cfg.Services[si].Backends) {
			return cfg.Services[si].Backends[bi].Name
		}
	case matchPath(seg, "service[%d]", &si):
		if si < len(cfg.Services) {
			return cfg.Services[si].Name
		}
	case matchPath(seg, "cluster.peer[%d]", &pi):
		if cfg.Cluster != nil && pi < len(cfg.Cluster.Peers) {
			return cfg.Cluster.Peers[pi].Name
		}
	}
	return ""
}

// matchPath reports whether s is exactly format with integers filled in.
func matchPath(s, format string, args ...any) bool {
	n, err := fmt.Sscanf(s, format, args...)
	if err != nil || n != len(args) {
		return false
	}
	return fmt.Sprintf(format, derefInts(args)...) == s
}

func derefInts(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		out[i] = *(a.(*int))
	}
	return out
}

// stripIndexes drops array indexes from a path: service[0].backend -> service.backend.
func stripIndexes(path string) string {
	var b strings.Builder
	skip := false
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '[':
			skip = true
		case c == ']' && skip:
			skip = false
		case !skip:
			b.WriteByte(c)
		}
	}
	return b.String()
}
