package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Real answers of Patroni's REST API.
//
// From Patroni's documentation, docs/rest_api.rst, "Monitoring endpoint" (GET /patroni; the
// health-check endpoints answer the same document): Patroni 4.0.0's "A healthy cluster" and
// "An unlocked cluster", Patroni 3.1.0's healthy cluster (as in the docs of v3.3.0, the last
// with "master"), and the "DCS failsafe mode" example, whose replica shows a primary's xlog.
const (
	docPrimary4 = `{"state": "running", "postmaster_start_time": "2024-08-28 19:39:26.352526+00:00", "role": "primary",
  "server_version": 160004, "xlog": {"location": 67395656}, "timeline": 1,
  "replication": [{"usename": "replicator", "application_name": "patroni2", "client_addr": "10.89.0.6", "state": "streaming", "sync_state": "async", "sync_priority": 0},
    {"usename": "replicator", "application_name": "patroni3", "client_addr": "10.89.0.2", "state": "streaming", "sync_state": "async", "sync_priority": 0}],
  "dcs_last_seen": 1692356718, "tags": {"clonefrom": true}, "database_system_identifier": "7268616322854375442",
  "patroni": {"version": "4.0.0", "scope": "demo", "name": "patroni1"}}`
	docUnlockedReplica4 = `{"state": "running", "postmaster_start_time": "2024-08-28 19:39:26.352526+00:00", "role": "replica",
  "server_version": 160004, "xlog": {"received_location": 67419744, "replayed_location": 67419744, "replayed_timestamp": null, "paused": false},
  "timeline": 1, "replication": [{"usename": "replicator", "application_name": "patroni2", "client_addr": "10.89.0.6", "state": "streaming", "sync_state": "async", "sync_priority": 0}],
  "cluster_unlocked": true, "dcs_last_seen": 1692356928, "tags": {"clonefrom": true},
  "database_system_identifier": "7268616322854375442", "patroni": {"version": "4.0.0", "scope": "demo", "name": "patroni1"}}`
	docMaster31 = `{"state": "running", "postmaster_start_time": "2023-08-18 11:03:37.966359+00:00", "role": "master",
  "server_version": 150004, "xlog": {"location": 67395656}, "timeline": 1, "dcs_last_seen": 1692356718,
  "tags": {"clonefrom": true}, "database_system_identifier": "7268616322854375442",
  "patroni": {"version": "3.1.0", "scope": "demo", "name": "patroni1"}}`
	docFailsafeReplica4 = `{"state": "running", "postmaster_start_time": "2024-08-28 19:39:26.352526+00:00", "role": "replica",
  "server_version": 160004, "xlog": {"location": 67420024}, "timeline": 1, "cluster_unlocked": true,
  "failsafe_mode_is_active": true, "dcs_last_seen": 1692356928,
  "patroni": {"version": "4.0.0", "scope": "demo", "name": "patroni1"}}`
)

// Captured with curl from a two-node Patroni 3.0.2 cluster (Debian bookworm's package, over
// PostgreSQL 15, with Patroni's built-in Raft DCS): GET /primary of the leader (200) and of
// the replica (503); the replica again while its startup process was stopped, so that it
// received WAL it had not replayed (read at capturedAt); the old leader while Patroni demoted
// it after losing the DCS (still 200, PostgreSQL "stopping"), then starting as a replica, and
// once it followed the new leader (its WAL receiver restarts at a segment boundary, below what
// it replayed).
const (
	realLeader   = `{"state": "running", "postmaster_start_time": "2026-12-06 22:41:35.927716+00:00", "role": "master", "server_version": 150018, "xlog": {"location": 50331744}, "timeline": 1, "replication": [{"usename": "repl", "application_name": "n2", "client_addr": "127.0.0.1", "state": "streaming", "sync_state": "async", "sync_priority": 0}], "dcs_last_seen": 1796596913, "database_system_identifier": "7716324891596034012", "patroni": {"version": "3.0.2", "scope": "qp"}}`
	realReplica  = `{"state": "running", "postmaster_start_time": "2026-12-06 22:41:40.126264+00:00", "role": "replica", "server_version": 150018, "xlog": {"received_location": 50331744, "replayed_location": 50331744, "replayed_timestamp": null, "paused": false}, "timeline": 1, "dcs_last_seen": 1796596913, "database_system_identifier": "7716324891596034012", "patroni": {"version": "3.0.2", "scope": "qp"}}`
	realLagging  = `{"state": "running", "postmaster_start_time": "2026-12-06 22:41:40.126264+00:00", "role": "replica", "server_version": 150018, "xlog": {"received_location": 69750840, "replayed_location": 63331968, "replayed_timestamp": "2026-12-06 22:42:11.982878+00:00", "paused": false}, "timeline": 1, "dcs_last_seen": 1796596943, "database_system_identifier": "7716324891596034012", "patroni": {"version": "3.0.2", "scope": "qp"}}`
	realStopping = `{"state": "stopping", "role": "master", "dcs_last_seen": 1796597068, "database_system_identifier": "7716324891596034012", "patroni": {"version": "3.0.2", "scope": "qp"}}`
	realStarting = `{"state": "starting", "role": "replica", "dcs_last_seen": 1796597068, "database_system_identifier": "7716324891596034012", "patroni": {"version": "3.0.2", "scope": "qp"}}`
	realRejoined = `{"state": "running", "postmaster_start_time": "2026-12-06 22:42:41.795422+00:00", "role": "replica", "server_version": 150018, "xlog": {"received_location": 67108864, "replayed_location": 69883008, "replayed_timestamp": null, "paused": false}, "timeline": 1, "dcs_last_seen": 1796597021, "database_system_identifier": "7716324891596034012", "patroni": {"version": "3.0.2", "scope": "qp"}}`
	capturedAt   = "2026-12-06T22:42:24.608881529Z"
)

func TestPatroniResult(t *testing.T) {
	now, _ := time.Parse(time.RFC3339Nano, capturedAt)
	replayedAt, _ := time.Parse(time.RFC3339Nano, "2026-12-06T22:42:11.982878Z")
	for _, tc := range []struct {
		name     string
		status   int
		body     string
		leader   bool // the path's status code tells the leader lock
		role     Role
		pos, rcv int64
		lag      time.Duration
	}{
		{"4.0 primary, GET /primary", 200, docPrimary4, true, RolePrimary, 67395656, -1, 0},
		{"4.0 primary, GET /patroni", 200, docPrimary4, false, RolePrimary, 67395656, -1, 0},
		{"3.1 master", 200, docMaster31, true, RolePrimary, 67395656, -1, 0},
		{"3.0.2 leader", 200, realLeader, true, RolePrimary, 50331744, -1, 0},
		// A replica is one whatever the code: 503 on /primary, 200 on /patroni.
		{"unlocked replica, GET /primary", 503, docUnlockedReplica4, true, RoleReplica, 67419744, 67419744, 0},
		{"unlocked replica, GET /patroni", 200, docUnlockedReplica4, false, RoleReplica, 67419744, 67419744, 0},
		{"3.0.2 replica", 503, realReplica, true, RoleReplica, 50331744, 50331744, 0},
		// Behind what it received: lag from the last replayed transaction.
		{"3.0.2 replica replaying late", 503, realLagging, true, RoleReplica, 63331968, 69750840, now.Sub(replayedAt)},
		// Received below replayed (a restarted WAL receiver): it holds what it replayed.
		{"3.0.2 rejoined old leader", 503, realRejoined, true, RoleReplica, 69883008, 69883008, 0},
		// No replayed position: none, and no lag.
		{"failsafe replica", 200, docFailsafeReplica4, false, RoleReplica, -1, -1, -1},
		// PostgreSQL is a primary but the node does not hold the leader lock (lost, or held by
		// another: Patroni is about to demote it): up, no role, no positions.
		{"primary without the lock", 503, realLeader, true, RoleUnknown, -1, -1, -1},
		{"primary of an unlocked cluster, GET /patroni", 200,
			strings.Replace(docPrimary4, `"dcs_last_seen"`, `"cluster_unlocked": true, "dcs_last_seen"`, 1), false, RoleUnknown, -1, -1, -1},
		{"primary in failsafe mode, GET /patroni", 200,
			strings.Replace(docPrimary4, `"dcs_last_seen"`, `"cluster_unlocked": true, "failsafe_mode_is_active": true, "dcs_last_seen"`, 1), false, RolePrimary, 67395656, -1, 0},
		{"standby leader", 503, strings.Replace(realReplica, `"replica"`, `"standby_leader"`, 1), true, RoleReplica, 50331744, 50331744, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := patroniResult(tc.status, []byte(tc.body), tc.leader, now)
			if !r.Up || r.Err != nil {
				t.Fatalf("down: %v", r.Err)
			}
			if r.Role != tc.role || r.Position != tc.pos || r.Received != tc.rcv || r.Lag != tc.lag {
				t.Errorf("role %v position %d received %d lag %v, want %v %d %d %v", r.Role, r.Position, r.Received, r.Lag,
					tc.role, tc.pos, tc.rcv, tc.lag)
			}
			// Lag in bytes is the Monitor's, from the primary's position; a primary lags none.
			wantBytes := int64(-1)
			if tc.role == RolePrimary {
				wantBytes = 0
			}
			if r.LagBytes != wantBytes {
				t.Errorf("lag bytes %d, want %d", r.LagBytes, wantBytes)
			}
		})
	}
}

func TestPatroniResultDown(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name   string
		status int
		body   string
		err    error
		msg    string
	}{
		{"demoting leader", 200, realStopping, ErrServer, `server error: Patroni reports PostgreSQL "stopping"`},
		{"demoted leader starting", 503, realStarting, ErrServer, `Patroni reports PostgreSQL "starting"`},
		{"not running", 503, `{"state": "start failed", "role": "replica"}`, ErrServer, `Patroni reports PostgreSQL "start failed"`},
		{"not Patroni", 200, `<html>hello</html>`, ErrProtocol, "not a Patroni status document"},
		{"not its document", 200, `{"status": "ok"}`, ErrProtocol, "no state or role"},
		{"truncated", 503, realReplica[:100], ErrProtocol, "status 503: not a Patroni status document"},
		{"auth", 401, `{"state": "running", "role": "primary"}`, ErrUnexpected, "status 401 (Patroni answers 200 or 503)"},
		{"not found", 404, ``, ErrUnexpected, "status 404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := patroniResult(tc.status, []byte(tc.body), true, now)
			if r.Up || !errors.Is(r.Err, tc.err) || !strings.Contains(r.Err.Error(), tc.msg) {
				t.Fatalf("up %v, err %v; want down with %v: %q", r.Up, r.Err, tc.err, tc.msg)
			}
			if r.Role != RoleUnknown || r.Position != -1 || r.LagBytes != -1 || r.Lag != -1 {
				t.Errorf("down with role %v position %d lag %d/%v", r.Role, r.Position, r.LagBytes, r.Lag)
			}
		})
	}
}

func TestPatroniTime(t *testing.T) {
	for in, want := range map[string]string{
		"2026-12-06 22:42:11.982878+00:00": "2026-12-06T22:42:11.982878Z",
		"2024-08-28 21:39:26+02:00":        "2024-08-28T19:39:26Z",
		"2024-08-28T19:39:26.5Z":           "2024-08-28T19:39:26.5Z",
	} {
		got, ok := patroniTime(in)
		if !ok || !got.UTC().Equal(mustTime(t, want)) {
			t.Errorf("patroniTime(%q) = %v, %v; want %s", in, got, ok, want)
		}
	}
	// A zone abbreviation would be read as UTC, hours off: no lag rather than a wrong one.
	for _, in := range []string{"2024-08-28 19:39:26.352 CEST", "", "yesterday"} {
		if _, ok := patroniTime(in); ok {
			t.Errorf("patroniTime(%q) parsed", in)
		}
	}
	if !patroniLeaderPath("/primary?lag=1MB") || !patroniLeaderPath("/") || patroniLeaderPath("/patroni") || patroniLeaderPath("/replica") {
		t.Error("patroniLeaderPath")
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
