package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// The text status shows a change under way, as the page does: a frozen
// primary is "up" until its fall-th failed check, but not silently.
func TestStatusShowsStreaks(t *testing.T) {
	st := &adminapi.Status{Services: []adminapi.Service{{Name: "pg", Target: "a", Backends: []adminapi.Backend{
		{Name: "a", Health: "up", Role: "primary", Failing: 2, Fall: 5, Rise: 2},
		{Name: "b", Health: "down", Rising: 1, Fall: 5, Rise: 2},
		{Name: "c", Health: "up", Role: "replica", Fall: 5, Rise: 2},
	}}}}
	var out bytes.Buffer
	printStatus(&out, st)
	for _, want := range []string{"up, failing 2/5", "down, rising 1/2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Count(out.String(), "failing")+strings.Count(out.String(), "rising") != 2 {
		t.Errorf("a steady backend shows a streak:\n%s", out.String())
	}
}
