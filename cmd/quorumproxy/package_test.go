package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// TestDebianPackage builds the .deb, installs it with dpkg, verifies the
// systemd unit, runs the installed binary as the package's user on the
// installed config the way systemd would (Type=notify: READY=1 once it
// serves, STOPPING=1 on SIGTERM), and removes and purges the package.
// It changes the machine, so it runs as root only (CI is root).
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("installs a package: root only")
	}
	for _, tool := range []string{"dpkg-deb", "dpkg", "systemd-analyze", "runuser"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	deb := strings.TrimSpace(run("bash", "../../packaging/build-deb.sh", binPath, t.TempDir()))
	info := run("dpkg-deb", "--info", deb)
	for _, want := range []string{"Package: quorumproxy", "Version: 0.9.0", "Depends: adduser"} {
		if !strings.Contains(info, want) {
			t.Errorf("package control lacks %q:\n%s", want, info)
		}
	}
	contents := run("dpkg-deb", "--contents", deb)
	for _, want := range []string{"./usr/bin/quorumproxy", "./lib/systemd/system/quorumproxy.service", "./etc/quorumproxy/quorumproxy.toml",
		"./usr/share/man/man1/quorumproxy.1.gz", "./usr/share/bash-completion/completions/quorumproxy",
		"./usr/share/zsh/vendor-completions/_quorumproxy"} {
		if !strings.Contains(contents, want) {
			t.Errorf("package lacks %s", want)
		}
	}
	run("dpkg", "-i", deb)
	t.Cleanup(func() { _ = exec.Command("dpkg", "--purge", "quorumproxy").Run() })
	if out, err := exec.Command("systemd-analyze", "verify", "/lib/systemd/system/quorumproxy.service").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	run("runuser", "-u", "quorumproxy", "--", "/usr/bin/quorumproxy", "check-config", "/etc/quorumproxy/quorumproxy.toml")

	// Type=notify as systemd runs it: a datagram socket the proxy's user
	// may write to.
	// (t.TempDir's parent is root's alone: the proxy's user could not reach it)
	dir, err := os.MkdirTemp("", "qp-notify-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	sock := filepath.Join(dir, "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(sock, 0o777)
	states := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				close(states)
				return
			}
			states <- string(buf[:n])
		}
	}()
	cmd := exec.Command("runuser", "-u", "quorumproxy", "--", "env", "NOTIFY_SOCKET="+sock,
		"/usr/bin/quorumproxy", "run", "/etc/quorumproxy/quorumproxy.toml")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // runuser and the proxy, killed together
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	}()
	want := func(prefix string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case s := <-states:
				if strings.HasPrefix(s, prefix) {
					return
				}
			case err := <-exited:
				t.Fatalf("the installed proxy exited (%v) before %q", err, prefix)
			case <-deadline:
				t.Fatalf("no %q from the installed proxy", prefix)
			}
		}
	}
	want("READY=1")
	testwait.For(t, "the installed proxy answers /health", 10*time.Second, func() bool {
		return strings.Contains(getBody(t, "http://127.0.0.1:7654/health"), `"services":1`)
	})
	cmd.Process.Signal(syscall.SIGTERM) // runuser passes it on
	want("STOPPING=1")
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the installed proxy did not stop on SIGTERM")
	}

	run("dpkg", "-r", "quorumproxy")
	if _, err := os.Stat("/usr/bin/quorumproxy"); err == nil {
		t.Error("/usr/bin/quorumproxy left after dpkg -r")
	}
	if _, err := os.Stat("/etc/quorumproxy/quorumproxy.toml"); err != nil {
		t.Errorf("dpkg -r removed the config (a conffile stays until purge): %v", err)
	}
	run("dpkg", "--purge", "quorumproxy")
	if _, err := os.Stat("/etc/quorumproxy/quorumproxy.toml"); err == nil {
		t.Error("the config left after dpkg --purge")
	}
}
