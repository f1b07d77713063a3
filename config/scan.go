package config

import (
	"errors"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// BurntSushi/toml keeps key positions private, so positions come from this
// small scanner. It walks the document's structure (tables, arrays of
// tables, dotted keys, inline tables, arrays) and records where each key
// path starts. Paths are a tree of nodes, one per key part or array index,
// so the work is linear in the file's size however deep it nests; lookups
// take paths in the decoder's form: service[0].backend[1].address.
//
// Parse runs it before the toml parser, whose cost grows much faster than
// the file with nesting, so the scanner also measures the depth and stops
// past maxDepth. It must end on any input, valid TOML or not.
type scanner struct {
	src       string
	i         int
	lineStart []int // byte offset of each line's start
	nodes     []node
	kids      map[nodeKey]int
	// deepAt is the offset of the first key or value nested deeper than
	// maxDepth, or -1; scanning stops there.
	deepAt int
	// overflows are integer values too large for int64, which the toml
	// parser would stop at.
	overflows []overflow
}

// overflow is an integer literal out of int64's range.
type overflow struct {
	node       int // its key or array element
	start, end int // byte offsets of the literal
}

// node is one key part or array element of a path.
type node struct {
	parent int
	depth  int  // parts from the root
	off    int  // byte offset of its key; -1 if none recorded
	isArr  bool // an array of tables ([[x]])
	arrLen int  // its elements so far
	key    string
	index  int // -1 for a key part
}

type nodeKey struct {
	parent int
	key    string
	index  int
}

const root = 0

// keyPositions scans src and returns the positions of its key paths.
func keyPositions(src string) *scanner {
	s := &scanner{src: src, kids: map[nodeKey]int{}, deepAt: -1}
	s.nodes = append(s.nodes, node{parent: -1, off: -1, index: -1})
	s.lineStart = append(s.lineStart, 0)
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			s.lineStart = append(s.lineStart, i+1)
		}
	}
	s.document()
	return s
}

// child returns the node for key part key (index < 0) or array element
// index of parent, making it if needed. Past maxDepth it records where
// and ends the scan.
func (s *scanner) child(parent int, key string, index int) int {
	k := nodeKey{parent, key, index}
	if n, ok := s.kids[k]; ok {
		return n
	}
	d := s.nodes[parent].depth + 1
	if d > maxDepth {
		if s.deepAt < 0 {
			s.deepAt = min(s.i, len(s.src))
			s.i = len(s.src) // every loop of the scanner ends at EOF
		}
		return parent // nothing deeper is recorded
	}
	s.nodes = append(s.nodes, node{parent: parent, depth: d, off: -1, key: key, index: index})
	n := len(s.nodes) - 1
	s.kids[k] = n
	return n
}

func (s *scanner) setPos(n, off int) {
	if s.nodes[n].off < 0 {
		s.nodes[n].off = off
	}
}

// tooDeep reports the line and column where the nesting passed maxDepth.
func (s *scanner) tooDeep() (line, col int, ok bool) {
	if s.deepAt < 0 {
		return 0, 0, false
	}
	line, col = s.lineCol(s.deepAt)
	return line, col, true
}

// lineCol converts a byte offset to a 1-based line and byte column.
func (s *scanner) lineCol(off int) (int, int) {
	l := sort.Search(len(s.lineStart), func(i int) bool { return s.lineStart[i] > off }) - 1
	return l + 1, off - s.lineStart[l] + 1
}

// lookup returns the position of path or, failing that, of its nearest
// ancestor that has one; 0, 0 if none does.
func (s *scanner) lookup(path string) (int, int) {
	off := -1
	n := root
	for _, p := range splitPath(path) {
		c, ok := s.kids[nodeKey{n, p.key, p.index}]
		if !ok {
			break
		}
		n = c
		if s.nodes[n].off >= 0 {
			off = s.nodes[n].off
		}
	}
	if off < 0 {
		return 0, 0
	}
	return s.lineCol(off)
}

// pathPart is one step of a decoder path: a key, or an index (key "").
type pathPart struct {
	key   string
	index int
}

// splitPath splits a path made by joinPath and indexPath into its parts.
func splitPath(path string) []pathPart {
	var parts []pathPart
	for i := 0; i < len(path); {
		switch c := path[i]; {
		case c == '.':
			i++
		case c == '[':
			j := strings.IndexByte(path[i:], ']')
			if j < 0 {
				return parts
			}
			n, err := strconv.Atoi(path[i+1 : i+j])
			if err != nil {
				return parts
			}
			parts = append(parts, pathPart{index: n})
			i += j + 1
		case c == '"':
			j := i + 1
			for j < len(path) && path[j] != '"' {
				if path[j] == '\\' {
					j++
				}
				j++
			}
			k, err := strconv.Unquote(path[i:min(j+1, len(path))])
			if err != nil {
				return parts
			}
			parts = append(parts, pathPart{key: k, index: -1})
			i = j + 1
		default:
			j := i
			for j < len(path) && path[j] != '.' && path[j] != '[' {
				j++
			}
			parts = append(parts, pathPart{key: path[i:j], index: -1})
			i = j
		}
	}
	return parts
}

// paths returns every recorded position by its path in the decoder's
// form; for tests.
func (s *scanner) paths() map[string]int {
	out := map[string]int{}
	str := make([]string, len(s.nodes))
	for n := 1; n < len(s.nodes); n++ { // parents come before their children
		nd := s.nodes[n]
		if nd.index >= 0 {
			str[n] = indexPath(str[nd.parent], nd.index)
		} else {
			str[n] = joinPath(str[nd.parent], nd.key)
		}
		if nd.off >= 0 {
			out[str[n]] = nd.off
		}
	}
	return out
}

func (s *scanner) peek() byte {
	if s.i < len(s.src) {
		return s.src[s.i]
	}
	return 0
}

func (s *scanner) eof() bool { return s.i >= len(s.src) }

func (s *scanner) skipSpace() {
	for !s.eof() && (s.src[s.i] == ' ' || s.src[s.i] == '\t' || s.src[s.i] == '\r') {
		s.i++
	}
}

// skipBlank skips whitespace, newlines and comments.
func (s *scanner) skipBlank() {
	for !s.eof() {
		switch s.src[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		case '#':
			for !s.eof() && s.src[s.i] != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

func (s *scanner) document() {
	cur := root
	for {
		s.skipBlank()
		if s.eof() {
			return
		}
		if s.peek() == '[' {
			start := s.i
			s.i++
			arr := s.peek() == '['
			if arr {
				s.i++
			}
			parts := s.key()
			s.skipSpace()
			for s.peek() == ']' {
				s.i++
			}
			cur = s.header(parts, arr, start)
			s.setPos(cur, start)
			continue
		}
		before := s.i
		s.keyValue(cur)
		if s.i == before { // not a key: never loop on it
			s.i++
		}
	}
}

// header resolves a table header to an indexed path; a part naming an array
// of tables refers to its last element, and [[x]] appends one.
func (s *scanner) header(parts []string, arr bool, start int) int {
	n := root
	for j, p := range parts {
		n = s.child(n, p, -1)
		nd := &s.nodes[n]
		if j == len(parts)-1 && arr {
			s.setPos(n, start) // the array as a whole: its first element
			nd.isArr = true
			nd.arrLen++
			n = s.child(n, "", nd.arrLen-1)
		} else if nd.isArr && nd.arrLen > 0 {
			n = s.child(n, "", nd.arrLen-1)
		}
	}
	return n
}

// keyValue scans "key = value" in table cur.
func (s *scanner) keyValue(cur int) {
	start := s.i
	parts := s.key()
	if len(parts) == 0 {
		return
	}
	path := cur
	for _, p := range parts {
		path = s.child(path, p, -1)
		s.setPos(path, start)
	}
	s.skipSpace()
	if s.peek() != '=' {
		return
	}
	s.i++
	s.value(path)
}

// key scans a possibly dotted, possibly quoted key.
func (s *scanner) key() []string {
	var parts []string
	for {
		s.skipSpace()
		switch c := s.peek(); c {
		case '"':
			parts = append(parts, s.basicString())
		case '\'':
			s.i++
			j := strings.IndexByte(s.src[s.i:], '\'')
			if j < 0 {
				j = len(s.src) - s.i
			}
			parts = append(parts, s.src[s.i:s.i+j])
			s.i = min(s.i+j+1, len(s.src))
		default:
			start := s.i
			for !s.eof() && isBareKeyByte(s.src[s.i]) {
				s.i++
			}
			if s.i == start {
				return parts
			}
			parts = append(parts, s.src[start:s.i])
		}
		s.skipSpace()
		if s.peek() != '.' {
			return parts
		}
		s.i++
	}
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c >= 0x80
}

// basicString scans a one-line "..." string and returns its decoded text.
func (s *scanner) basicString() string {
	s.i++ // opening quote
	var b strings.Builder
	for !s.eof() {
		c := s.src[s.i]
		switch {
		case c == '"':
			s.i++
			return b.String()
		case c == '\\' && s.i+1 < len(s.src):
			s.i += 2
			switch e := s.src[s.i-1]; e {
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case 'e':
				b.WriteByte(0x1b)
			case 'x', 'u', 'U':
				n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
				if s.i+n <= len(s.src) {
					if r, err := strconv.ParseUint(s.src[s.i:s.i+n], 16, 32); err == nil {
						b.WriteRune(rune(r))
					}
					s.i += n
				}
			default:
				b.WriteByte(e)
			}
		case c == '\n':
			return b.String()
		default:
			_, size := utf8.DecodeRuneInString(s.src[s.i:])
			b.WriteString(s.src[s.i : s.i+size])
			s.i += size
		}
	}
	return b.String()
}

// value scans one value of key path; inline tables and arrays record the
// positions of what they contain.
func (s *scanner) value(path int) {
	s.skipSpace()
	switch {
	case strings.HasPrefix(s.src[s.i:], `"""`), strings.HasPrefix(s.src[s.i:], `'''`):
		s.multiline(s.src[s.i])
	case s.peek() == '"':
		s.basicString()
	case s.peek() == '\'':
		s.i++
		for !s.eof() && s.src[s.i] != '\'' && s.src[s.i] != '\n' {
			s.i++
		}
		if s.peek() == '\'' {
			s.i++
		}
	case s.peek() == '[':
		s.i++
		for n := 0; ; n++ {
			s.skipBlank()
			if s.eof() {
				return
			}
			if s.peek() == ']' {
				s.i++
				return
			}
			start := s.i
			el := s.child(path, "", n)
			s.setPos(el, start)
			s.value(el)
			s.skipBlank()
			if s.peek() == ',' {
				s.i++
			} else if s.peek() != ']' && s.i == start {
				s.i++ // unexpected byte: make progress
			}
		}
	case s.peek() == '{':
		s.i++
		for {
			s.skipBlank()
			if s.eof() {
				return
			}
			if s.peek() == '}' {
				s.i++
				return
			}
			start := s.i
			s.keyValue(path)
			s.skipBlank()
			if s.peek() == ',' {
				s.i++
			} else if s.peek() != '}' && s.i == start {
				s.i++
			}
		}
	default: // number, boolean or date: runs to a delimiter
		start := s.i
		for !s.eof() && !strings.ContainsRune(",]}\n#", rune(s.src[s.i])) {
			s.i++
		}
		s.checkInt(path, start, s.i)
	}
}

// checkInt records the literal in src[start:end] if it is an integer out
// of int64's range.
func (s *scanner) checkInt(node, start, end int) {
	tok := strings.TrimRight(s.src[start:end], " \t\r")
	if tok == "" || strings.Trim(tok, "0123456789abcdefABCDEF_+-xob") != "" {
		return
	}
	if _, err := strconv.ParseInt(strings.ReplaceAll(tok, "_", ""), 0, 64); errors.Is(err, strconv.ErrRange) {
		s.overflows = append(s.overflows, overflow{node: node, start: start, end: start + len(tok)})
	}
}

// pathOf returns node n's path in the decoder's form.
func (s *scanner) pathOf(n int) string {
	var parts []int
	for ; n > root; n = s.nodes[n].parent {
		parts = append(parts, n)
	}
	path := ""
	for i := len(parts) - 1; i >= 0; i-- {
		nd := s.nodes[parts[i]]
		if nd.index >= 0 {
			path = indexPath(path, nd.index)
		} else {
			path = joinPath(path, nd.key)
		}
	}
	return path
}

// multiline scans a multi-line string of quote q; up to two quotes may precede the
// closing delimiter.
func (s *scanner) multiline(q byte) {
	s.i += 3
	for !s.eof() {
		c := s.src[s.i]
		if c == '\\' && q == '"' {
			s.i += 2
			continue
		}
		if c == q && strings.HasPrefix(s.src[s.i:], string([]byte{q, q, q})) {
			n := 0
			for s.i < len(s.src) && s.src[s.i] == q && n < 5 {
				s.i++
				n++
			}
			return
		}
		s.i++
	}
	s.i = min(s.i, len(s.src))
}

// joinPath appends key part p to path, quoting p unless it is a bare key.
func joinPath(path, p string) string {
	if !isBareKey(p) {
		p = strconv.Quote(p)
	}
	if path == "" {
		return p
	}
	return path + "." + p
}

func indexPath(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func isBareKey(p string) bool {
	if p == "" {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// parentPath drops the last index or key of path: a.b[1] -> a.b -> a.
// Quoted parts may hold dots or brackets, so it scans from the left.
func parentPath(path string) string {
	last := -1
	for i := 0; i < len(path); i++ {
		switch path[i] {
		case '"':
			for i++; i < len(path) && path[i] != '"'; i++ {
				if path[i] == '\\' {
					i++
				}
			}
		case '.', '[':
			last = i
		}
	}
	if last < 0 {
		return ""
	}
	return path[:last]
}
