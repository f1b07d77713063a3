package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Each server started with TLS serves it with the issued certificate,
// which a client that trusts the CA verifies.
func TestServersWithTLS(t *testing.T) {
	ca, err := NewCA("testenv ca")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("server", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	verified := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("postgres", func(t *testing.T) {
		p := MustPostgres(t, PGOptions{TLS: cert})
		cfg, err := pgx.ParseConfig("host=127.0.0.1 sslmode=require user=" + User + " password=" + p.Password() + " dbname=postgres port=" + p.Addr()[len("127.0.0.1:"):])
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSConfig, cfg.Fallbacks = verified, nil
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var ssl bool
		if err := c.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
			t.Fatalf("ssl=%v err=%v", ssl, err)
		}
	})
	t.Run("redis", func(t *testing.T) {
		r := MustRedis(t, RedisOptions{TLS: cert})
		opts := r.Options()
		opts.Addr, opts.TLSConfig = r.TLSAddr(), verified
		c := redis.NewClient(opts)
		defer c.Close()
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("mariadb", func(t *testing.T) {
		m := MustMariaDBWith(t, MariaOptions{TLS: cert})
		cfg := mysql.NewConfig()
		cfg.Net, cfg.Addr, cfg.User, cfg.Passwd, cfg.TLS = "tcp", m.Addr(), User, DefaultPassword, verified
		conn, err := mysql.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c, err := conn.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
}
