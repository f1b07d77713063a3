package health

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// An http check with Roles "patroni" reads Patroni's REST API
// (https://patroni.readthedocs.io/en/latest/rest_api.html). Every health-check GET there
// answers with the node's status as a JSON document, whatever its status code; Patroni builds
// it in patroni/api.py (RestApiHandler.get_postgresql_status):
//
//	"state"  PostgreSQL as Patroni runs it: "running", "starting", "stopped", "crashed", ...
//	"role"   "primary" ("master" before Patroni 4.0) when pg_is_in_recovery() is false, else
//	         "replica", or "standby_leader" on the leader of a standby cluster
//	"xlog"   on a primary {"location"}: its flushed WAL position in bytes; on a replica
//	         {"received_location", "replayed_location", "replayed_timestamp", "paused"}
//
// "role" says what PostgreSQL is, not whether the node holds Patroni's leader lock. The status
// code of GET /primary (and of "/", "/read-write", "/leader") says that: 200 only on the node
// that holds it, 503 elsewhere, with the same document. So one GET /primary gives the role,
// the replication positions and the lock: a node is primary when PostgreSQL is and it holds the
// lock; a PostgreSQL primary without it (the lock lost, or held by another node: Patroni is
// about to demote it) is up with no role, so that no write goes there. GET /patroni always
// answers 200: the lock is then judged by "cluster_unlocked" alone (set when no node holds it),
// which misses a lock held by another node.

// patroniLeaderPaths are the paths whose status code is 200 only on the holder of the leader
// lock (patroni/api.py, RestApiHandler.do_GET; "/" is "/primary" there).
var patroniLeaderPaths = []string{"/", "/primary", "/read-write", "/leader", "/master"}

// patroniStatus is the part of Patroni's status document a check reads.
type patroniStatus struct {
	State string `json:"state"`
	Role  string `json:"role"`
	XLog  struct {
		Location          *int64  `json:"location"`
		ReceivedLocation  *int64  `json:"received_location"`
		ReplayedLocation  *int64  `json:"replayed_location"`
		ReplayedTimestamp *string `json:"replayed_timestamp"`
	} `json:"xlog"`
	ClusterUnlocked bool `json:"cluster_unlocked"`
	Failsafe        bool `json:"failsafe_mode_is_active"`
}

// patroniResult judges one answer of Patroni's REST API: its status code and body, for a path
// whose status code tells the leader lock (leaderPath) or not, read at now. Latency is left
// to the caller.
func patroniResult(status int, body []byte, leaderPath bool, now time.Time) Result {
	r := Result{LagBytes: -1, Lag: -1, Position: -1, Received: -1}
	if status != 200 && status != 503 {
		r.Err = fmt.Errorf("%w: status %d (Patroni answers 200 or 503)", ErrUnexpected, status)
		return r
	}
	var st patroniStatus
	if err := json.Unmarshal(body, &st); err != nil {
		r.Err = fmt.Errorf("%w: status %d: not a Patroni status document: %w", ErrProtocol, status, err)
		return r
	}
	if st.State == "" || st.Role == "" {
		r.Err = fmt.Errorf("%w: status %d: not a Patroni status document (no state or role)", ErrProtocol, status)
		return r
	}
	if st.State != "running" {
		r.Err = fmt.Errorf("%w: Patroni reports PostgreSQL %q", ErrServer, st.State)
		return r
	}
	r.Up = true
	switch st.Role {
	case "primary", "master":
		holds := status == 200
		if !leaderPath {
			holds = !st.ClusterUnlocked || st.Failsafe
		}
		if !holds {
			return r // PostgreSQL is a primary, but not Patroni's leader: no role
		}
		r.Role, r.LagBytes, r.Lag = RolePrimary, 0, 0
		if p := st.XLog.Location; p != nil && *p >= 0 {
			r.Position = *p
		}
	case "replica", "standby_leader":
		r.Role = RoleReplica
		x := st.XLog
		if x.ReplayedLocation != nil && *x.ReplayedLocation >= 0 {
			r.Position = *x.ReplayedLocation
		}
		if x.ReceivedLocation != nil && *x.ReceivedLocation >= 0 {
			r.Received = max(*x.ReceivedLocation, r.Position)
		}
		switch {
		case r.Position >= 0 && r.Received >= 0 && r.Received <= r.Position:
			// Replayed all it received: the last replayed transaction may be old simply
			// because the primary is idle (as the postgres check reads it).
			r.Lag = 0
		case x.ReplayedTimestamp != nil:
			if ts, ok := patroniTime(*x.ReplayedTimestamp); ok {
				r.Lag = max(0, now.Sub(ts))
			}
		}
	}
	return r
}

// patroniTime parses the replayed_timestamp of Patroni's document: Python's str() of a
// datetime with its offset ("2024-08-28 19:39:26.352526+00:00"). A time without a numeric
// offset is not guessed at: a zone abbreviation would be read as UTC.
func patroniTime(s string) (time.Time, bool) {
	for _, layout := range []string{"2006-01-02 15:04:05.999999999Z07:00", time.RFC3339Nano} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// patroniLeaderPath reports whether path (its query left out) answers 200 only on the holder of
// Patroni's leader lock.
func patroniLeaderPath(path string) bool {
	path, _, _ = strings.Cut(path, "?")
	for _, p := range patroniLeaderPaths {
		if path == p {
			return true
		}
	}
	return false
}
