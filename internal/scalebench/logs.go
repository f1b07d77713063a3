package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// logSummary is what one proxy logged: lines by level, and the most
// frequent WARN and ERROR messages with one full line each.
type logSummary struct {
	lines   int
	bytes   int64
	byLevel map[string]int
	top     []msgCount // WARN and ERROR messages, most frequent first
}

type msgCount struct {
	level, msg string
	n          int
	example    string
}

// summarizeLog reads a proxy's log (slog text format: `time=... level=WARN
// msg="..." key=value ...`). Lines of another shape count under level "".
func summarizeLog(r io.Reader) (logSummary, error) {
	s := logSummary{byLevel: map[string]int{}}
	counts := map[[2]string]*msgCount{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		s.lines++
		s.bytes += int64(len(line)) + 1
		level, msg := logField(line, "level"), logField(line, "msg")
		s.byLevel[level]++
		if level != "WARN" && level != "ERROR" {
			continue
		}
		k := [2]string{level, msg}
		c := counts[k]
		if c == nil {
			c = &msgCount{level: level, msg: msg, example: line}
			counts[k] = c
		}
		c.n++
	}
	for _, c := range counts {
		s.top = append(s.top, *c)
	}
	sort.Slice(s.top, func(i, j int) bool {
		if s.top[i].n != s.top[j].n {
			return s.top[i].n > s.top[j].n
		}
		return s.top[i].msg < s.top[j].msg
	})
	return s, sc.Err()
}

// logField is the value of key in a slog text line: a bare word, or a
// quoted string (unquoted here).
func logField(line, key string) string {
	i := strings.Index(" "+line, " "+key+"=")
	if i < 0 {
		return ""
	}
	rest := line[i+len(key)+1:]
	if strings.HasPrefix(rest, `"`) {
		if v, err := strconv.QuotedPrefix(rest); err == nil {
			if u, err := strconv.Unquote(v); err == nil {
				return u
			}
		}
		return rest
	}
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		return rest[:j]
	}
	return rest
}

// summarizeLogFile is summarizeLog of the file at path.
func summarizeLogFile(path string) (logSummary, error) {
	f, err := os.Open(path)
	if err != nil {
		return logSummary{}, err
	}
	defer f.Close()
	return summarizeLog(f)
}

// countLines is the number of lines in the file at path (0 if unreadable).
func countLines(path string) int {
	s, err := summarizeLogFile(path)
	if err != nil {
		return 0
	}
	return s.lines
}

// levels is "INFO 12, WARN 3" in a fixed order.
func (s logSummary) levels() string {
	var parts []string
	for _, l := range []string{"DEBUG", "INFO", "WARN", "ERROR", ""} {
		if n := s.byLevel[l]; n > 0 {
			name := l
			if name == "" {
				name = "other"
			}
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// firstDown is when a proxy's log first says, after since, that the backend
// at address went down (the health monitor's `backend down` line, for one
// target or summarised for many); ok is false if it never did.
func firstDown(r io.Reader, address string, since time.Time) (at time.Time, ok bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if logField(line, "msg") != "backend down" || logField(line, "address") != address {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, logField(line, "time"))
		if err != nil || t.Before(since) {
			continue
		}
		return t, true, nil
	}
	return time.Time{}, false, sc.Err()
}

// quorumDown is how long after since the quorum's last proxy (the
// (n/2+1)-th) logged that the backend at address went down: from then on
// a failover is the cluster's work, not the checks'. 0 if fewer did.
func quorumDown(paths []string, address string, since time.Time) (time.Duration, error) {
	var ds []time.Duration
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return 0, err
		}
		t, ok, err := firstDown(f, address, since)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		if ok {
			ds = append(ds, t.Sub(since))
		}
	}
	q := len(paths)/2 + 1
	if len(ds) < q {
		return 0, nil
	}
	slices.Sort(ds)
	return ds[q-1], nil
}
