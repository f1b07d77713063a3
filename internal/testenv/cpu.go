package testenv

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// CPUSeconds is the CPU time pid has used so far, threads included: the
// sum of its threads' run time in nanoseconds from /proc/PID/task/*/schedstat
// (utime and stime count in 10ms ticks, too coarse for a few thousand
// requests), or /proc/PID/stat where schedstat is missing.
func CPUSeconds(pid int) (float64, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	if ents, err := os.ReadDir(dir); err == nil {
		var ns float64
		read := 0
		for _, e := range ents {
			b, err := os.ReadFile(dir + "/" + e.Name() + "/schedstat")
			if err != nil {
				continue // the thread exited meanwhile
			}
			f := strings.Fields(string(b))
			if len(f) == 0 {
				continue
			}
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				ns += v
				read++
			}
		}
		if read > 0 {
			return ns / 1e9, nil
		}
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
	}
	return ParseStatCPU(string(b))
}

// ParseStatCPU reads utime and stime (fields 14 and 15) from a
// /proc/PID/stat line, in seconds; the command name in parentheses may
// hold spaces and parentheses.
func ParseStatCPU(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime is field 14.
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields", len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("stat: %w", err)
	}
	return float64(ut+st) / clockTicks, nil
}
