#!/usr/bin/env bash
# build-deb.sh BINARY OUTDIR: a .deb of quorumproxy (dpkg-deb): the binary,
# a hardened systemd unit (Type=notify), a starting config, the man page,
# bash and zsh completion and the docs. Prints the package's path.
set -euo pipefail
bin=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
release=$("$bin" version | sed -n 's/^quorumproxy \([0-9][0-9.]*\) .*/\1/p')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/quorumproxy"
install -D -m 0644 "$here/quorumproxy.service" "$stage/lib/systemd/system/quorumproxy.service"
install -D -m 0640 "$here/quorumproxy.toml" "$stage/etc/quorumproxy/quorumproxy.toml"
install -D -m 0644 "$here/quorumproxy.1" "$stage/usr/share/man/man1/quorumproxy.1"
gzip -9n "$stage/usr/share/man/man1/quorumproxy.1"
install -D -m 0644 "$here/quorumproxy.bash-completion" "$stage/usr/share/bash-completion/completions/quorumproxy"
install -D -m 0644 "$here/quorumproxy.zsh-completion" "$stage/usr/share/zsh/vendor-completions/_quorumproxy"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/quorumproxy/README.md"
install -D -m 0644 "$root/testdata/example.toml" "$stage/usr/share/doc/quorumproxy/example.toml"
install -D -m 0644 "$root/LICENSE" "$stage/usr/share/doc/quorumproxy/copyright"
mkdir -p "$stage/usr/share/doc/quorumproxy/hooks"
cp -a "$root/testdata/hooks/." "$stage/usr/share/doc/quorumproxy/hooks/"
mkdir -p "$stage/DEBIAN"
install -m 0755 "$here/postinst" "$here/postrm" "$here/prerm" "$stage/DEBIAN/"
echo /etc/quorumproxy/quorumproxy.toml >"$stage/DEBIAN/conffiles"
size=$(du -sk "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: quorumproxy
Version: $release
Architecture: $arch
Maintainer: quorumproxy developers <quorumproxy@localhost>
Installed-Size: $size
Depends: adduser
Section: net
Priority: optional
Homepage: https://github.com/quorumproxy/quorumproxy
Description: TCP failover proxy whose instances agree by quorum
 quorumproxy sits in front of PostgreSQL, Redis, MySQL/MariaDB and other
 TCP services, checks the backends and sends new connections to the
 primary. Several proxies gossip, and a majority must agree before a
 primary is fenced and traffic moves.
CONTROL
mkdir -p "$out"
deb="$out/quorumproxy_${release}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
