package testenv

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisStartStop(t *testing.T) {
	Need(t, "redis")
	r, err := StartRedis(RedisOptions{Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := r.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	o := r.Options()
	o.Password = "wrong"
	c := redis.NewClient(o)
	err = c.Ping(ctx).Err()
	_ = c.Close()
	if err == nil {
		t.Fatal("wrong password accepted")
	}
	pid, logPath := r.Pid(), r.LogPath()
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("redis %d alive after Stop", pid)
	}
	if _, err := os.Stat(logPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir left after Stop: %v", err)
	}
	if err := r.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestRedisReplica(t *testing.T) {
	r := MustRedis(t, RedisOptions{Password: "pw"})
	s := MustReplica(t, r)
	ctx := ctxT(t)
	if err := r.Client().Set(ctx, "key", "value", 0).Err(); err != nil {
		t.Fatal(err)
	}
	err := poll(ctx, func() (bool, error, error) {
		v, err := s.Client().Get(ctx, "key").Result()
		if err != nil {
			return false, err, nil
		}
		return v == "value", nil, nil
	})
	if err != nil {
		t.Fatalf("key never reached the replica: %v", err)
	}
	if err := s.Client().Set(ctx, "x", "y", 0).Err(); err == nil {
		t.Fatal("write to a read-only replica accepted")
	}
	if err := s.Promote(); err != nil {
		t.Fatal(err)
	}
	if err := s.Client().Set(ctx, "x", "y", 0).Err(); err != nil {
		t.Fatalf("write after promote: %v", err)
	}
	role, err := s.Client().Do(ctx, "ROLE").Slice()
	if err != nil || len(role) == 0 || role[0] != "master" {
		t.Fatalf("ROLE after promote = %v, %v", role, err)
	}
}

func TestRedisPauseKillRestart(t *testing.T) {
	r := MustRedis(t, RedisOptions{})
	ctx := ctxT(t)
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	o := r.Options()
	o.ReadTimeout = 300 * time.Millisecond
	c := redis.NewClient(o)
	defer c.Close()
	err := c.Ping(ctx).Err()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("PING on a paused server: %v, want a timeout", err)
	}
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := r.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	pid := r.Pid()
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatal("alive after Kill")
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := r.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	// The cleanup's Stop must also work on a paused server.
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
}

func TestRedisReplicaRestart(t *testing.T) {
	r := MustRedis(t, RedisOptions{})
	s := MustReplica(t, r)
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := poll(ctx, func() (bool, error, error) {
		info, err := s.Client().Info(ctx, "replication").Result()
		if err != nil {
			return false, err, nil
		}
		if infoField(info, "role") != "slave" {
			return false, nil, errors.New("role after restart: " + infoField(info, "role"))
		}
		return infoField(info, "master_link_status") == "up", nil, nil
	})
	if err != nil {
		t.Fatalf("replica link after restart: %v", err)
	}
	// With its primary gone, a replica still restarts.
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(); err != nil {
		t.Fatalf("restart with the primary down: %v", err)
	}
}
