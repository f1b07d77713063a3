package daemon

import (
	"testing"

	"github.com/quorumproxy/quorumproxy/config"
)

// [service.health] port, roles and a backend's check_address reach the
// checks; the traffic's address stays the target's, and a service whose
// http checks read Patroni's roles is role-aware for the proxy.
func TestHealthTargetsCheckElsewhere(t *testing.T) {
	const text = `[[service]]
name = "pg"
listen = "127.0.0.1:6432"
role = "primary"
health = { kind = "http", roles = "patroni", port = 8008 }
backend = [{ name = "a", address = "10.0.0.1:5432" }, { name = "b", address = "10.0.0.2:5432", check_address = "192.168.0.2:8009" }]
`
	cfg, _, err := config.Parse("qp.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	tgs := healthTargets(cfg)
	if len(tgs) != 2 {
		t.Fatalf("%d targets", len(tgs))
	}
	for i, want := range []struct{ addr, check string }{{"10.0.0.1:5432", "10.0.0.1:8008"}, {"10.0.0.2:5432", "192.168.0.2:8009"}} {
		tg := tgs[i]
		if tg.Address != want.addr || tg.Spec.CheckAddress(tg.Address) != want.check {
			t.Errorf("%s: traffic %s checked at %s, want %s checked at %s", tg.Backend, tg.Address, tg.Spec.CheckAddress(tg.Address), want.addr, want.check)
		}
		if tg.Spec.Roles != "patroni" || tg.Spec.Port != 8008 || tg.Spec.Kind != "http" {
			t.Errorf("%s: spec %v", tg.Backend, tg.Spec)
		}
	}
	if ps := proxyServices(cfg, nil); !ps[0].RoleAware {
		t.Error("an http check with roles = \"patroni\" is not role-aware for the proxy")
	}
}
