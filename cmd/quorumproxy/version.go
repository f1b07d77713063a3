package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// release is the semantic version of this tree; bump it with each release.
const release = "0.9.0"

// commit and buildDate are set by `make build` (-ldflags -X); a plain `go
// build` takes them from the VCS stamp Go embeds (the commit's time then).
var (
	commit    = ""
	buildDate = ""
)

// version is the release and the commit it was built from, as the logs
// and /status report it.
var version = versionString()

func versionString() string {
	c, _ := vcsInfo()
	if c == "" {
		return release
	}
	return release + "+" + c
}

// vcsInfo is the commit (with -dirty for uncommitted changes) and the
// build date, from the ldflags or else the VCS stamp.
func vcsInfo() (rev, date string) {
	rev, date = commit, buildDate
	if rev != "" && date != "" {
		return rev, date
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return rev, date
	}
	var modified bool
	var vrev, vtime string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			vrev = s.Value
		case "vcs.time":
			vtime = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" && vrev != "" {
		rev = vrev[:min(len(vrev), 12)]
		if modified {
			rev += "-dirty"
		}
	}
	if date == "" {
		date = vtime
	}
	return rev, date
}

// versionLine is what `quorumproxy version` prints.
func versionLine() string {
	rev, date := vcsInfo()
	if rev == "" {
		rev = "unknown"
	}
	if date == "" {
		date = "unknown"
	}
	return fmt.Sprintf("quorumproxy %s (commit %s, built %s, %s %s/%s)", release, rev, date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
