package config

import (
	"strings"
	"testing"
)

// A Patroni cluster fronted with roles: checks on Patroni's port, one
// backend checked at an address of its own, role = "primary" accepted.
func TestCheckPortAndPatroniRoles(t *testing.T) {
	const text = `[[service]]
name = "pg"
listen = "127.0.0.1:6432"
role = "primary"
alert_lag = "10s"

  [service.health]
  kind = "http"
  roles = "patroni"
  port = 8008
  path = "/primary"

  [[service.backend]]
  name = "a"
  address = "10.0.0.1:5432"

  [[service.backend]]
  name = "b"
  address = "10.0.0.2:5432"
  check_address = "192.168.0.2:8009"
`
	cfg, warns, err := Parse("qp.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) > 0 {
		t.Errorf("warnings: %v", warns)
	}
	s := cfg.Services[0]
	if h := s.Health; h.Port != 8008 || h.Roles != RolesPatroni || h.Path != "/primary" || h.Method != "GET" {
		t.Errorf("health %+v", h)
	}
	if s.Backends[0].CheckAddress != "" || s.Backends[1].CheckAddress != "192.168.0.2:8009" {
		t.Errorf("check addresses %q, %q", s.Backends[0].CheckAddress, s.Backends[1].CheckAddress)
	}
	if !s.RoleAware() {
		t.Error("an http check with roles = \"patroni\" is not role-aware")
	}

	// Left out: port 0 and no roles; a plain http check reports none.
	cfg, _, err = Parse("qp.toml", []byte(strings.NewReplacer(`role = "primary"`+"\n", "", `roles = "patroni"`+"\n", "",
		"port = 8008\n", "", `check_address = "192.168.0.2:8009"`+"\n", "", `alert_lag = "10s"`+"\n", "").Replace(text)))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Services[0]; s.Health.Port != 0 || s.Health.Roles != RolesNone || s.RoleAware() || s.Backends[1].CheckAddress != "" {
		t.Errorf("defaults: %+v, role-aware %v", s, s.RoleAware())
	}
}

// roles = "patroni" checking the backends' own port is almost surely a
// mistake (PostgreSQL listens there, not Patroni): a warning, unless every
// backend has a check_address. /patroni is an accepted path.
func TestPatroniWithoutPortWarns(t *testing.T) {
	const text = `[[service]]
name = "pg"
listen = "127.0.0.1:6432"
health = { kind = "http", roles = "patroni", path = "/patroni" }
backend = [{ name = "a", address = "10.0.0.1:5432" }, { name = "b", address = "10.0.0.2:5432", check_address = "10.0.0.2:8008" }]
`
	_, warns, err := Parse("qp.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := `qp.toml:4:27: warning: service "pg" health: roles = "patroni" without port: checks go to each backend's own port, where PostgreSQL listens; set port to Patroni's REST API port (8008 by default)`
	if len(warns) != 1 || warns[0].Error() != want {
		t.Errorf("warnings %v, want\n%s", warns, want)
	}
	both := strings.Replace(text, `address = "10.0.0.1:5432" }`, `address = "10.0.0.1:5432", check_address = "10.0.0.1:8008" }`, 1)
	if _, warns, err := Parse("qp.toml", []byte(both)); err != nil || len(warns) > 0 {
		t.Errorf("every backend with a check_address: err %v, warnings %v", err, warns)
	}
}

func TestHealthRoleAware(t *testing.T) {
	for _, tc := range []struct {
		h    Health
		want bool
	}{
		{Health{Kind: KindHTTP}, false},
		{Health{Kind: KindHTTP, Roles: RolesPatroni}, true},
		{Health{Kind: KindTCP, Roles: RolesPatroni}, false}, // refused by validation anyway
		{Health{Kind: KindPostgres}, true},
		{Health{Kind: KindTCP, Port: 8008}, false},
	} {
		if got := tc.h.RoleAware(); got != tc.want {
			t.Errorf("%+v: RoleAware %v, want %v", tc.h, got, tc.want)
		}
	}
}
