package health

import "testing"

func TestRiseFall(t *testing.T) {
	const rise, fall = 2, 3
	U, D, N := StatusUp, StatusDown, StatusUnknown
	tests := []struct {
		name    string
		results string   // '+' success, '-' failure
		want    []Status // status after each result
		flips   string   // 'x' where the status flipped
	}{
		{"first success decides", "+", []Status{U}, "x"},
		{"first failure decides", "-", []Status{D}, "x"},
		{"fall needs three in a row", "+---", []Status{U, U, U, D}, "x..x"},
		{"success resets the failure streak", "+--+--", []Status{U, U, U, U, U, U}, "x....."},
		{"rise needs two in a row", "-++", []Status{D, D, U}, "x.x"},
		{"failure resets the success streak", "-+-+-+", []Status{D, D, D, D, D, D}, "x....."},
		{"flap then settle", "+---++", []Status{U, U, U, D, D, U}, "x..x.x"},
		{"staying up flips nothing", "++++", []Status{U, U, U, U}, "x..."},
		{"no results", "", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var rf riseFall
			if rf.status != N {
				t.Fatalf("zero value status = %v, want unknown", rf.status)
			}
			for i, c := range tc.results {
				flipped := rf.observe(c == '+', rise, fall)
				if rf.status != tc.want[i] {
					t.Errorf("after %q: status %v, want %v", tc.results[:i+1], rf.status, tc.want[i])
				}
				if flipped != (tc.flips[i] == 'x') {
					t.Errorf("after %q: flipped %v, want %v", tc.results[:i+1], flipped, tc.flips[i] == 'x')
				}
			}
		})
	}
}

func TestRiseFallChanging(t *testing.T) {
	var rf riseFall
	rf.observe(true, 2, 3)
	if rf.changing() {
		t.Fatal("changing right after the first result")
	}
	rf.observe(false, 2, 3)
	if !rf.changing() {
		t.Fatal("not changing during a fall streak")
	}
	rf.observe(true, 2, 3)
	if rf.changing() {
		t.Fatal("still changing after a success ended the fall streak")
	}
}

func TestRoleStatusString(t *testing.T) {
	for v, want := range map[Role]string{RoleUnknown: "unknown", RolePrimary: "primary", RoleReplica: "replica", Role(9): "unknown"} {
		if got := v.String(); got != want {
			t.Errorf("Role(%d) = %q, want %q", int(v), got, want)
		}
	}
	for v, want := range map[Status]string{StatusUnknown: "unknown", StatusUp: "up", StatusDown: "down"} {
		if got := v.String(); got != want {
			t.Errorf("Status(%d) = %q, want %q", int(v), got, want)
		}
	}
}
