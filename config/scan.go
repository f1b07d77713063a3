package config

import (
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// BurntSushi/toml keeps key positions private, so positions come from this
// small scanner. It runs only on text the toml parser has accepted, walks
// the document's structure (tables, arrays of tables, dotted keys, inline
// tables, arrays) and records where each key path starts. Paths use the
// same form as the decoder: service[0].backend[1].address.
type scanner struct {
	src       string
	i         int
	lineStart []int          // byte offset of each line's start
	pos       map[string]int // key path -> byte offset of its key
	arrLen    map[string]int // array-of-tables path -> elements so far
}

// keyPositions returns the byte offset of every key path in src.
func keyPositions(src string) *scanner {
	s := &scanner{src: src, pos: map[string]int{}, arrLen: map[string]int{}}
	s.lineStart = append(s.lineStart, 0)
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			s.lineStart = append(s.lineStart, i+1)
		}
	}
	s.document()
	return s
}

// lineCol converts a byte offset to a 1-based line and byte column.
func (s *scanner) lineCol(off int) (int, int) {
	l := sort.Search(len(s.lineStart), func(i int) bool { return s.lineStart[i] > off }) - 1
	return l + 1, off - s.lineStart[l] + 1
}

// lookup returns the position of path or, failing that, of its nearest
// ancestor that has one; 0, 0 if none does.
func (s *scanner) lookup(path string) (int, int) {
	for path != "" {
		if off, ok := s.pos[path]; ok {
			return s.lineCol(off)
		}
		path = parentPath(path)
	}
	return 0, 0
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
	cur := ""
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
			if _, ok := s.pos[cur]; !ok {
				s.pos[cur] = start
			}
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
func (s *scanner) header(parts []string, arr bool, start int) string {
	path := ""
	for j, p := range parts {
		path = joinPath(path, p)
		if j == len(parts)-1 && arr {
			if _, ok := s.pos[path]; !ok {
				s.pos[path] = start // the array as a whole: its first element
			}
			n := s.arrLen[path]
			s.arrLen[path] = n + 1
			path = indexPath(path, n)
		} else if n, ok := s.arrLen[path]; ok && n > 0 {
			path = indexPath(path, n-1)
		}
	}
	return path
}

// keyValue scans "key = value" in table cur.
func (s *scanner) keyValue(cur string) {
	start := s.i
	parts := s.key()
	if len(parts) == 0 {
		return
	}
	path := cur
	for _, p := range parts {
		path = joinPath(path, p)
		if _, ok := s.pos[path]; !ok {
			s.pos[path] = start
		}
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
func (s *scanner) value(path string) {
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
			el := indexPath(path, n)
			start := s.i
			if _, ok := s.pos[el]; !ok {
				s.pos[el] = start
			}
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
		for !s.eof() && !strings.ContainsRune(",]}\n#", rune(s.src[s.i])) {
			s.i++
		}
	}
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
