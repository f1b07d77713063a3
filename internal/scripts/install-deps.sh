#!/usr/bin/env bash
# install-deps.sh: make sure the servers and tools quorumproxy's tests, demo
# and benchmarks start themselves are installed (Debian 12).
#
# Idempotent: when everything is present it changes nothing. As root it
# installs what is missing with apt-get (one `apt-get update`); otherwise it
# prints what is missing and exits 1. It never starts a system service: the
# tests start their own servers on free ports, and a distribution's default
# instance (PostgreSQL on 5432, Redis on 6379, ...) must not run behind them.
set -euo pipefail

PG_VERSION=15

# need CHECK PACKAGE: CHECK is a program name looked up in PATH (plus the
# sbin directories) or an absolute path; PACKAGE is what provides it.
checks=(
	"/usr/lib/postgresql/${PG_VERSION}/bin/postgres postgresql"
	"/usr/lib/postgresql/${PG_VERSION}/bin/initdb postgresql"
	"/usr/lib/postgresql/${PG_VERSION}/bin/pg_basebackup postgresql"
	"/usr/lib/postgresql/${PG_VERSION}/bin/pgbench postgresql"
	"psql postgresql-client"
	"pgbench postgresql-client"
	"redis-server redis-server"
	"redis-cli redis-tools"
	"redis-benchmark redis-tools"
	"mariadbd mariadb-server"
	"mariadb-install-db mariadb-server"
	"mariadb mariadb-client"
	"haproxy haproxy"
	"iperf3 iperf3"
	"ip iproute2"
	"tc iproute2"
	"iptables iptables"
	"ps procps"
	"sysctl procps"
	"runuser util-linux"
	"promtool prometheus"
	"systemd-analyze systemd"
	"adduser adduser"
	"dpkg-deb dpkg"
	"zsh zsh"
	# headless, for the status page's browser test
	"chromium chromium"
)

have() {
	case "$1" in
	/*) [ -x "$1" ] ;;
	*) PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$1" >/dev/null 2>&1 ;;
	esac
}

missing_cmds=()
missing_pkgs=()
scan() {
	missing_cmds=()
	missing_pkgs=()
	local entry cmd pkg p dup
	for entry in "${checks[@]}"; do
		cmd=${entry% *}
		pkg=${entry#* }
		if ! have "$cmd"; then
			missing_cmds+=("$cmd")
			dup=0
			for p in "${missing_pkgs[@]}"; do
				[ "$p" = "$pkg" ] && dup=1
			done
			[ "$dup" = 1 ] || missing_pkgs+=("$pkg")
		fi
	done
}

versions() {
	local v=()
	v+=("postgres $("/usr/lib/postgresql/${PG_VERSION}/bin/postgres" --version 2>/dev/null | awk '{print $3}')")
	v+=("redis $(redis-server --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p')")
	v+=("mariadb $(PATH="$PATH:/usr/sbin" mariadbd --version 2>/dev/null | awk '{print $3}' | cut -d- -f1)")
	v+=("haproxy $(PATH="$PATH:/usr/sbin" haproxy -v 2>/dev/null | awk 'NR==1{print $3}')")
	v+=("iperf3 $(iperf3 --version 2>/dev/null | awk 'NR==1{print $2}')")
	local IFS=','
	echo "${v[*]}" | sed 's/,/, /g'
}

scan
if [ "${#missing_cmds[@]}" -eq 0 ]; then
	echo "install-deps: all present ($(versions))"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing ${missing_cmds[*]}; as root run: apt-get install ${missing_pkgs[*]}" >&2
	exit 1
fi

# Deny every service start for the length of the install (exit 101 is
# policy-rc.d's "action forbidden"), and put back whatever was there.
policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ] || [ -L "$policy" ]; then
	backup=$(mktemp /usr/sbin/policy-rc.d.qp-backup.XXXXXX)
	cp -a "$policy" "$backup"
fi
restore_policy() {
	if [ -n "$backup" ]; then
		mv -f "$backup" "$policy"
	else
		rm -f "$policy"
	fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# quorumproxy install-deps: no service starts during the install\nexit 101\n' >"$policy"
chmod 0755 "$policy"

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/qp-install-deps.XXXXXX.log)
if ! { apt-get update && apt-get install -y --no-install-recommends "${missing_pkgs[@]}"; } >"$log" 2>&1; then
	tail -n 40 "$log" >&2
	echo "install-deps: apt-get failed installing ${missing_pkgs[*]} (log: $log)" >&2
	exit 1
fi
rm -f "$log"

scan
if [ "${#missing_cmds[@]}" -ne 0 ]; then
	echo "install-deps: still missing after install: ${missing_cmds[*]}" >&2
	exit 1
fi
echo "install-deps: installed ${missing_pkgs[*]} ($(versions))"
