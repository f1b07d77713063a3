package cluster

import (
	"strings"
	"testing"
)

// TestDecide is the table of what a tick decides, in the order the
// protocol gives its reasons precedence. Each case starts from a quiet
// service (record at epoch 4 on pg-a, nothing asked, nothing wrong) and
// changes what it names.
func TestDecide(t *testing.T) {
	quiet := func() tickFacts {
		return tickFacts{
			rec:        Record{Epoch: 4, Value: Value{Primary: "pg-a", Since: 2}},
			switchWhy:  func() string { return "" },
			fenceValue: func() (Value, string) { return Value{}, "unused" },
			bootstrap:  func() string { return "" },
			rankWait:   func() bool { return false },
			candidate:  func() (string, string) { return "pg-b", "" },
			stalled:    func() bool { return false },
			follow:     func() string { return "" },
			liveness:   func() bool { return false },
			rolesTo:    func() string { return "" },
			primaryUp:  func() bool { return true },
			quorum:     func() bool { return true },
		}
	}
	forced := Ballot{Epoch: 6, Value: Value{Primary: "pg-c"}}
	cases := []struct {
		name  string
		set   func(*tickFacts)
		what  decisionKind
		kind  kind
		value string // the proposed value's String, or a substring of why
	}{
		{"quiet: nothing", func(*tickFacts) {}, decideNothing, 0, ""},
		{"a switchover with a forced value proposes the forced value", func(f *tickFacts) { f.switchTo, f.forced = "pg-b", forced },
			decidePropose, kindForced, `primary "pg-c"`},
		{"a switchover to the primary is done", func(f *tickFacts) { f.switchTo = "pg-a" }, decideSwitchDone, 0, ""},
		{"a switchover that cannot go ahead is dropped", func(f *tickFacts) {
			f.switchTo, f.switchWhy = "pg-b", func() string { return "it is not up here" }
		}, decideDropSwitch, 0, `switchover to "pg-b" dropped: it is not up here`},
		{"a switchover", func(f *tickFacts) { f.switchTo = "pg-b" }, decidePropose, kindSwitchover, `primary "pg-b"`},
		{"a switchover without roles fences the old primary", func(f *tickFacts) { f.switchTo, f.fenceOld = "pg-b", true },
			decidePropose, kindSwitchover, `primary "pg-b", fenced pg-a`},
		{"a switchover comes before a failover", func(f *tickFacts) { f.switchTo, f.down = "pg-c", true }, decidePropose, kindSwitchover, `primary "pg-c"`},
		{"a fence", func(f *tickFacts) {
			f.fenceOp = &fenceOp{backend: "pg-c", fence: true}
			f.fenceValue = func() (Value, string) { return Value{Primary: "pg-a", Fenced: "pg-c"}, "" }
		}, decidePropose, kindFence, `fenced pg-c`},
		{"an unfence", func(f *tickFacts) {
			f.rec.Fenced = "pg-c"
			f.fenceOp = &fenceOp{backend: "pg-c"}
			f.fenceValue = func() (Value, string) { return Value{Primary: "pg-a"}, "" }
		}, decidePropose, kindUnfence, `primary "pg-a"`},
		{"a failover waits for a replica's position read since the primary fell silent", func(f *tickFacts) {
			f.down = true
			f.candidate = func() (string, string) {
				return "", "waiting for the replication position of pg-c read after the primary's last check"
			}
		}, decideNothing, 0, ""},
		{"paused: a down primary is not failed over", func(f *tickFacts) { f.rec.Paused, f.down = true, true },
			decidePaused, 0, "no automatic failover"},
		{"paused: the record is decided again for liveness, still paused", func(f *tickFacts) {
			f.rec.Paused, f.liveness = true, func() bool { return true }
		}, decidePropose, kindReaffirm, `primary "pg-a", paused`},
		{"paused: no move to the backend that reports primary", func(f *tickFacts) {
			f.rec.Paused, f.follow = true, func() string { return "pg-b" }
		}, decideNothing, 0, ""},
		{"paused: a switchover still goes through", func(f *tickFacts) { f.rec.Paused, f.switchTo = true, "pg-b" },
			decidePropose, kindSwitchover, `primary "pg-b"`},
		{"a pause", func(f *tickFacts) { f.pauseOp = &pauseOp{on: true} }, decidePropose, kindPause, `primary "pg-a", paused`},
		{"a resume", func(f *tickFacts) { f.rec.Paused, f.pauseOp = true, &pauseOp{} }, decidePropose, kindResume, `primary "pg-a"$`},
		{"a pause of a paused service is done", func(f *tickFacts) { f.rec.Paused, f.pauseOp = true, &pauseOp{on: true} },
			decidePauseDone, 0, "already so"},
		{"a first primary waits its rank", func(f *tickFacts) {
			f.rec = Record{}
			f.bootstrap = func() string { return "pg-a" }
			f.rankWait = func() bool { return true }
		}, decideNothing, 0, ""},
		{"a fence with no successor is dropped", func(f *tickFacts) {
			f.fenceOp = &fenceOp{backend: "pg-a", fence: true}
			f.fenceValue = func() (Value, string) { return Value{}, "no other backend" }
		}, decideDropFence, 0, "no backend can take over: no other backend"},
		{"a fence a decision already carried out", func(f *tickFacts) {
			f.rec.Fenced = "pg-c"
			f.fenceOp = &fenceOp{backend: "pg-c", fence: true}
			f.fenceValue = func() (Value, string) { return f.rec.Value, "" }
		}, decideFenceDone, 0, "already so at epoch 4"},
		{"a new cluster waits", func(f *tickFacts) { f.rec = Record{} }, decideNothing, 0, ""},
		{"a new cluster bootstraps", func(f *tickFacts) { f.rec, f.bootstrap = Record{}, func() string { return "pg-b" } },
			decidePropose, kindBootstrap, `primary "pg-b"`},
		{"a new cluster finishes a forced value with a quorum", func(f *tickFacts) { f.rec, f.forced = Record{}, forced },
			decidePropose, kindForced, `primary "pg-c"`},
		{"... and waits without one", func(f *tickFacts) { f.rec, f.forced, f.quorum = Record{}, forced, func() bool { return false } },
			decideNothing, 0, ""},
		{"a failover", func(f *tickFacts) { f.down = true }, decidePropose, kindFailover, `primary "pg-b"`},
		{"a failover without roles fences the old primary", func(f *tickFacts) { f.down, f.fenceOld = true, true },
			decidePropose, kindFailover, `primary "pg-b", fenced pg-a`},
		{"a failover waits out the rank delay", func(f *tickFacts) { f.down, f.rankWait = true, func() bool { return true } }, decideNothing, 0, ""},
		{"a failover with a forced value", func(f *tickFacts) { f.down, f.forced = true, forced }, decidePropose, kindForced, `primary "pg-c"`},
		{"no candidate", func(f *tickFacts) {
			f.down, f.candidate = true, func() (string, string) { return "", "no other backend is up" }
		}, decideNoCandidate, 0, `no failover from "pg-a": no other backend is up`},
		{"a move after a failed promote", func(f *tickFacts) { f.retry, f.retryTo = &promoteFailure{backend: "pg-a"}, "pg-c" },
			decidePropose, kindPromoteFailed, `primary "pg-c"`},
		{"a move after a promote a fence hook fenced keeps it fenced", func(f *tickFacts) {
			f.retry, f.retryTo = &promoteFailure{backend: "pg-a", fenced: true}, "pg-c"
		}, decidePropose, kindPromoteFailed, `primary "pg-c", fenced pg-a`},
		{"a promote nobody carries out is decided again", func(f *tickFacts) { f.stalled = func() bool { return true } },
			decidePropose, kindReaffirm, `primary "pg-a"`},
		{"the backend that reports primary", func(f *tickFacts) { f.follow = func() string { return "pg-c" } },
			decidePropose, kindReaffirm, `primary "pg-c"`},
		{"liveness re-affirms the primary", func(f *tickFacts) { f.liveness = func() bool { return true } },
			decidePropose, kindReaffirm, `primary "pg-a"`},
		{"liveness re-affirms the one that reports primary", func(f *tickFacts) {
			f.liveness, f.rolesTo = func() bool { return true }, func() string { return "pg-b" }
		}, decidePropose, kindReaffirm, `primary "pg-b"`},
		{"liveness finishes a forced value", func(f *tickFacts) { f.liveness, f.forced = func() bool { return true }, forced },
			decidePropose, kindForced, `primary "pg-c"`},
		{"liveness with the primary down here does nothing", func(f *tickFacts) {
			f.liveness, f.primaryUp = func() bool { return true }, func() bool { return false }
		}, decideNothing, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := quiet()
			tc.set(&f)
			d := decide(f)
			if d.what != tc.what || d.kind != tc.kind {
				t.Fatalf("decided %d %s (%s %s), want %d %s", d.what, d.kind, d.value, d.why, tc.what, tc.kind)
			}
			got := d.why
			if d.what == decidePropose {
				got = d.value.String()
			}
			// a trailing $ anchors the value at the end
			if want, anchored := strings.CutSuffix(tc.value, "$"); (anchored && !strings.HasSuffix(got, want)) || (!anchored && !strings.Contains(got, tc.value)) {
				t.Fatalf("decided %q, want %q in it", got, tc.value)
			}
		})
	}
}
