// Command quorumproxy is a layer-4 failover proxy for PostgreSQL, Redis,
// MySQL/MariaDB and any other TCP service.
//
//	quorumproxy run [-config] FILE       the daemon (SIGUSR2: an upgrade that drops nothing)
//	quorumproxy check-config FILE        every problem in FILE, exit 1 if any
//	quorumproxy status [-admin ADDR]     the admin API's /status as a table
//	quorumproxy switchover -service S -to B
//	quorumproxy fence|unfence -service S -backend B
//	quorumproxy drain|undrain -service S -backend B
//	quorumproxy history [-service S] [-n N]
//	quorumproxy upgrade [-admin ADDR]
//	quorumproxy version
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: quorumproxy <command> [flags]

commands:
  run [-config] FILE          run the proxy (SIGHUP reloads, SIGTERM drains, SIGUSR2 restarts
                              onto the binary on disk, handing over the listening sockets)
  check-config FILE           report every problem in FILE; exit 1 if any
  status [-admin ADDR]        show services, backends, health and the cluster from a running proxy
  switchover -service S -to B move a clustered service to backend B (voted; needs the admin token)
  fence -service S -backend B keep B out of every failover (moves the service if B is its primary)
  unfence -service S -backend B
                              make B a failover candidate again (both voted; need the admin token)
  drain -service S -backend B no new connections to B on this proxy; open sessions run on
  undrain -service S -backend B
                              new connections to B again (both local to this proxy; need the token)
  pause [-service S]          no automatic failover of S (default: every clustered service) until
  resume [-service S]         resume; switchovers, fences and unfences still work (voted; token)
  drill -config F -service S -- CMD...
                              failover drill: write through the proxy, fail the primary with CMD
                              (or -switchover-to B), report detection, decision, RTO and lost writes
  history [-service S] [-n N] what the proxy decided and did: records, hook runs (exit status,
                              -output for their output), operators' requests, reloads
  upgrade                     restart onto the binary on disk without refusing a connection (as
                              SIGUSR2; needs the token); waits until the new process serves
  version                     print the version, the commit and the build date
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "check-config":
		return cmdCheckConfig(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "switchover":
		return cmdSwitchover(args[1:], stdout, stderr)
	case "fence", "unfence", "drain", "undrain":
		return cmdBackendControl(args[0], args[1:], stdout, stderr)
	case "drill":
		return cmdDrill(args[1:], stdout, stderr)
	case "pause", "resume":
		return cmdPause(args[0], args[1:], stdout, stderr)
	case "history":
		return cmdHistory(args[1:], stdout, stderr)
	case "upgrade":
		return cmdUpgrade(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, versionLine())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "quorumproxy: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
