package main

import (
	"syscall"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// proc is one quorumproxy process, in a process group of its own, its
// output in a log file.
type proc = testenv.Group

// raiseNoFile lifts this process's open-file limit, which the proxies
// inherit, to want when it may (root), else to the hard limit.
func raiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Max < want {
		up := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) == nil {
			return want, nil
		}
	}
	lim.Cur = max(lim.Cur, min(want, lim.Max))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}
