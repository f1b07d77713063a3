package testenv

import "testing"

// owned registers s to be stopped when t ends, or fails t if it did not start.
func owned[S interface{ Stop() error }](t testing.TB, s S, err error) S {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// MustPostgres starts a PostgreSQL primary for t (see StartPostgres) and
// stops it when t ends. It skips or fails t as Need does when PostgreSQL is
// missing.
func MustPostgres(t testing.TB, opts PGOptions) *Postgres {
	t.Helper()
	Need(t, "postgres")
	p, err := StartPostgres(opts)
	return owned(t, p, err)
}

// MustStandby starts a streaming standby of p for t (see StartStandby) and
// stops it when t ends.
func MustStandby(t testing.TB, p *Postgres, sync bool) *Postgres {
	t.Helper()
	s, err := p.StartStandby(sync)
	return owned(t, s, err)
}

// MustRedis starts a redis-server for t (see StartRedis) and stops it when
// t ends. It skips or fails t as Need does when Redis is missing.
func MustRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	Need(t, "redis")
	r, err := StartRedis(opts)
	return owned(t, r, err)
}

// MustReplica starts a replica of r for t (see StartReplica) and stops it
// when t ends.
func MustReplica(t testing.TB, r *Redis) *Redis {
	t.Helper()
	s, err := r.StartReplica()
	return owned(t, s, err)
}

// MustMariaDB starts a MariaDB server for t (see StartMariaDB) and stops it
// when t ends. It skips or fails t as Need does when MariaDB is missing.
func MustMariaDB(t testing.TB) *MariaDB {
	t.Helper()
	Need(t, "mariadb")
	m, err := StartMariaDB()
	return owned(t, m, err)
}

// MustMariaDBWith is MustMariaDB with options.
func MustMariaDBWith(t testing.TB, opts MariaOptions) *MariaDB {
	t.Helper()
	Need(t, "mariadb")
	m, err := StartMariaDBWith(opts)
	return owned(t, m, err)
}

// MustMariaDBReplica starts a replica of m for t (see StartReplica) and
// stops it when t ends.
func MustMariaDBReplica(t testing.TB, m *MariaDB) *MariaDB {
	t.Helper()
	r, err := m.StartReplica()
	return owned(t, r, err)
}
