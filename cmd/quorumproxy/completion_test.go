package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// The subcommands the usage text lists: "  name ..." at the start of a line.
func usageCommands(t *testing.T) []string {
	t.Helper()
	out, _, code := runBin(t, "help")
	if code != 0 {
		t.Fatalf("quorumproxy help: exit %d", code)
	}
	var cmds []string
	for _, m := range regexp.MustCompile(`(?m)^  ([a-z][a-z-]*)`).FindAllStringSubmatch(out, -1) {
		cmds = append(cmds, m[1])
	}
	if len(cmds) < 10 {
		t.Fatalf("usage lists %d commands: %q", len(cmds), cmds)
	}
	return append(cmds, "help")
}

// completions runs a shell snippet with the built binary first on PATH
// as "quorumproxy" and returns its output's words.
func completions(t *testing.T, shell, script string) []string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(binPath, filepath.Join(dir, "quorumproxy")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(shell, "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", shell, err, out)
	}
	w := strings.Fields(string(out))
	slices.Sort(w)
	return w
}

// The packaged completions offer exactly the commands the binary knows,
// and a command's flags as its -h prints them.
func TestShellCompletion(t *testing.T) {
	want := usageCommands(t)
	slices.Sort(want)
	flags := []string{"-admin", "-config", "-no-wait", "-service", "-timeout", "-to", "-token-file"}
	bashFile, _ := filepath.Abs("../../packaging/quorumproxy.bash-completion")
	zshFile, _ := filepath.Abs("../../packaging/quorumproxy.zsh-completion")

	bash := func(words ...string) string {
		return `source ` + bashFile + `; COMP_WORDS=(quorumproxy ` + strings.Join(words, " ") + `); COMP_CWORD=` +
			string(rune('0'+len(words))) + `; _quorumproxy; printf '%s\n' "${COMPREPLY[@]}"`
	}
	t.Run("bash", func(t *testing.T) {
		if got := completions(t, "bash", bash("''")); !slices.Equal(got, want) {
			t.Errorf("bash offers commands %q; the binary has %q", got, want)
		}
		if got := completions(t, "bash", bash("switchover", "-")); !slices.Equal(got, flags) {
			t.Errorf("bash offers switchover flags %q; want %q", got, flags)
		}
	})

	// zsh's completion widgets run only in an interactive line editor, so
	// the builtins the function calls are stood in for by ones that print
	// what they were given; the function's own logic and the binary are real.
	zsh := func(current int, prefix string, words ...string) string {
		return `_describe() { for c in ${(P)${@[-1]}}; do print -r -- ${c%%:*}; done }
compadd() { [[ $1 == -a ]] && print -rl -- ${(P)2} }
_files() { print -- FILES }
_call_program() { shift; "$@" }
source <(sed '$d' ` + zshFile + `) # all but the call at its end
words=(quorumproxy ` + strings.Join(words, " ") + `); CURRENT=` + string(rune('0'+current)) + `; PREFIX=` + prefix + `
_quorumproxy`
	}
	t.Run("zsh", func(t *testing.T) {
		testenv.Need(t, "zsh")
		if out, err := exec.Command("zsh", "-n", zshFile).CombinedOutput(); err != nil {
			t.Fatalf("zsh -n: %v\n%s", err, out)
		}
		if got := completions(t, "zsh", zsh(2, "''", "''")); !slices.Equal(got, want) {
			t.Errorf("zsh offers commands %q; the binary has %q", got, want)
		}
		if got := completions(t, "zsh", zsh(3, "-", "switchover", "-")); !slices.Equal(got, flags) {
			t.Errorf("zsh offers switchover flags %q; want %q", got, flags)
		}
		if got := completions(t, "zsh", zsh(3, "''", "run", "''")); !slices.Equal(got, []string{"FILES"}) {
			t.Errorf("zsh offers %q after run; want files", got)
		}
	})
}
