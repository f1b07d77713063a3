package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Problem is one error or warning found in a config file.
type Problem struct {
	File    string // file name as given to Load or Parse
	Line    int    // 1-based line; 0 if unknown
	Col     int    // 1-based byte column; 0 if unknown
	Path    string // what the problem is about, e.g. `service "pg" backend "b2"`; "" for the file as a whole
	Msg     string // what is wrong, naming the key
	Warning bool   // true for a warning: the config is still usable
}

// Error formats the problem as "file:line:col: path: msg", leaving out
// line:col when unknown and path when empty. Warnings say so after the position.
func (p Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(p.Line))
		if p.Col > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(p.Col))
		}
	}
	b.WriteString(": ")
	if p.Warning {
		b.WriteString("warning: ")
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is the error returned by Load and Parse when a config is invalid:
// every error found, in file order, one per line of Error().
type Problems []Problem

// Error returns one problem per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// sortProblems orders problems by position; problems without a position go last.
func sortProblems(ps []Problem) {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		if (a.Line == 0) != (b.Line == 0) {
			if a.Line == 0 {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
}
