package groupexec

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCaptureHeadAndTail(t *testing.T) {
	data := []byte(strings.Repeat("0123456789", 50))
	for _, limit := range []int{0, 1, 7, 64, 500, 600} {
		for _, chunk := range []int{1, 3, 10, 64, 1000} {
			head, tail := &capture{limit: limit}, &capture{limit: limit, tail: true}
			for p := data; len(p) > 0; {
				k := min(chunk, len(p))
				head.keep(p[:k])
				tail.keep(p[:k])
				p = p[k:]
			}
			n := min(limit, len(data))
			if got := head.bytes(); !bytes.Equal(got, data[:n]) {
				t.Errorf("limit %d chunk %d: head %q", limit, chunk, got)
			}
			if got := tail.bytes(); !bytes.Equal(got, data[len(data)-n:]) {
				t.Errorf("limit %d chunk %d: tail %q", limit, chunk, got)
			}
			if want := limit < len(data); head.truncated != want || tail.truncated != want {
				t.Errorf("limit %d chunk %d: truncated %v/%v, want %v", limit, chunk, head.truncated, tail.truncated, want)
			}
		}
	}
}

func TestRunStatusOutputAndTimeout(t *testing.T) {
	res := Run(context.Background(), []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}, nil, Options{Limit: 100})
	var ee *exec.ExitError
	if !errors.As(res.Err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("err %v, want exit status 3", res.Err)
	}
	if string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Fatalf("stdout %q stderr %q", res.Stdout, res.Stderr)
	}
	res = Run(context.Background(), []string{"/bin/sh", "-c", "echo a; echo b >&2; echo c"}, nil, Options{Limit: 100, Combined: true})
	if res.Err != nil || string(res.Stdout) != "a\nb\nc\n" || res.Stderr != nil {
		t.Fatalf("combined: %v %q %q", res.Err, res.Stdout, res.Stderr)
	}
	if res := Run(context.Background(), []string{"/nonexistent/cmd"}, nil, Options{}); res.Err == nil {
		t.Fatal("missing command ran")
	}
	if res := Run(context.Background(), nil, nil, Options{}); res.Err == nil {
		t.Fatal("empty argv ran")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res = Run(ctx, []string{"/bin/sh", "-c", "sleep 30 & sleep 30"}, nil, Options{})
	if !errors.Is(res.Err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", res.Err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("took %v", took)
	}
}
