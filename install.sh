#!/bin/sh
# Installs kone, a Kubernetes distribution in one binary, and runs it as a service.
#
#   curl -sfL https://github.com/kone-dev/kone/releases/latest/download/install.sh | sh -
#   curl -sfL .../install.sh | sh -s - server --tls-san kone.example.com
#   curl -sfL .../install.sh | KONE_URL=https://SERVER:6443 KONE_TOKEN=K10... sh -
#
# The first argument is the command, `server` or `agent` (default: agent when KONE_URL is set,
# else server); the rest go to that command in the service's command line. Every KONE_*
# variable of the installer's environment (KONE_URL, KONE_TOKEN, KONE_NODE_NAME, ...) goes into
# the service's environment file, readable by root only.
#
# The installer downloads kone-linux-<arch>.zst (or kone-linux-<arch> where zstd is missing) and
# sha256sum-<arch>.txt, checks the sum, installs the binary, links kubectl and ctr to it, writes
# kone-killall.sh and an uninstall script next to it, and writes, enables and starts a systemd
# unit or an OpenRC service. Without either it says how to start kone by hand.
#
# Settings, all optional:
#   INSTALL_KONE_VERSION        release to install, such as v0.1.0 (default: the latest)
#   INSTALL_KONE_DOWNLOAD_URL   where the release files are (default: the GitHub release)
#   INSTALL_KONE_GITHUB_URL     a mirror laid out like the project's GitHub page, whose
#                               releases/download/VERSION holds the release files
#   INSTALL_KONE_SKIP_DOWNLOAD  true: install the kone already in the bin dir (air-gapped)
#   INSTALL_KONE_BIN_DIR        where kone and the scripts go (default: /usr/local/bin)
#   INSTALL_KONE_EXEC           command and arguments, before those given to the installer
#   INSTALL_KONE_NAME           service name kone-<name> instead of kone or kone-agent
#   INSTALL_KONE_SKIP_SYMLINK   true: no kubectl and ctr links
#   INSTALL_KONE_SKIP_ENABLE    true: neither enable nor start the service
#   INSTALL_KONE_SKIP_START     true: do not start (or restart) the service
#   INSTALL_KONE_SYSTEMD_DIR    write a systemd unit, into this directory (default:
#                               /etc/systemd/system, when systemd runs)
#   INSTALL_KONE_OPENRC_DIR     write an OpenRC service, into this directory (default:
#                               /etc/init.d, when OpenRC is installed)
#   INSTALL_KONE_KILLALL_SH     name (or path) of the killall script (default: kone-killall.sh)
#   INSTALL_KONE_UNINSTALL_SH   name (or path) of the uninstall script (default:
#                               <service>-uninstall.sh)
set -e

GITHUB_URL=${INSTALL_KONE_GITHUB_URL:-https://github.com/kone-dev/kone}
GITHUB_URL=${GITHUB_URL%/}
DOCS_URL=https://github.com/kone-dev/kone#readme

info() {
	printf '[INFO]  %s\n' "$*"
}

warn() {
	printf '[WARN]  %s\n' "$*" >&2
}

fatal() {
	printf '[ERROR] %s\n' "$*" >&2
	exit 1
}

is_true() {
	case $1 in
	true | TRUE | True | yes | 1) return 0 ;;
	*) return 1 ;;
	esac
}

# replace_all STRING CHAR WITH: sets REPLY to STRING with every CHAR replaced by WITH.
replace_all() {
	_rest=$1
	REPLY=
	while :; do
		case $_rest in
		*"$2"*)
			REPLY=$REPLY${_rest%%"$2"*}$3
			_rest=${_rest#*"$2"}
			;;
		*)
			REPLY=$REPLY$_rest
			return
			;;
		esac
	done
}

# quote_sh WORD: sets REPLY to WORD as one shell word, quoted only where needed.
quote_sh() {
	case $1 in
	'' | *[!A-Za-z0-9_./=:,@%+-]*)
		replace_all "$1" "'" "'\\''"
		REPLY="'$REPLY'"
		;;
	*) REPLY=$1 ;;
	esac
}

# quote_systemd WORD: sets REPLY to WORD as one word of a systemd command line, where $ and %
# are special even inside quotes.
quote_systemd() {
	case $1 in
	*'
'*) fatal "argument with a line break cannot go into a systemd unit: $1" ;;
	esac
	case $1 in
	'' | *[!A-Za-z0-9_./=:,@+-]*)
		replace_all "$1" "\\" "\\\\"
		replace_all "$REPLY" '"' '\"'
		replace_all "$REPLY" '$' '$$'
		replace_all "$REPLY" '%' '%%'
		REPLY="\"$REPLY\""
		;;
	*) REPLY=$1 ;;
	esac
}

# quote_dq STRING: sets REPLY to STRING escaped for the inside of double quotes, the same for
# sh and for systemd's EnvironmentFile.
quote_dq() {
	replace_all "$1" "\\" "\\\\"
	replace_all "$REPLY" '"' '\"'
	replace_all "$REPLY" '$' '\$'
	replace_all "$REPLY" '`' '\`'
}

# --- command and arguments -------------------------------------------------------------------

is_command() {
	[ "$1" = server ] || [ "$1" = agent ]
}

COMMAND=
if [ $# -gt 0 ] && is_command "$1"; then
	COMMAND=$1
	shift
fi
if [ -n "${INSTALL_KONE_EXEC:-}" ]; then
	# INSTALL_KONE_EXEC is split into words at blanks, without globbing.
	set -f
	# shellcheck disable=SC2086
	set -- $INSTALL_KONE_EXEC "$@"
	set +f
	if [ $# -gt 0 ] && is_command "$1"; then
		if [ -n "$COMMAND" ] && [ "$COMMAND" != "$1" ]; then
			fatal "the command is $COMMAND, but INSTALL_KONE_EXEC starts with $1"
		fi
		COMMAND=$1
		shift
	fi
fi
if [ -z "$COMMAND" ]; then
	if [ $# -gt 0 ]; then
		case $1 in
		-*) ;;
		*) fatal "unknown command '$1': expected server or agent" ;;
		esac
	fi
	if [ -n "${KONE_URL:-}" ]; then
		COMMAND=agent
	else
		COMMAND=server
	fi
fi

# An agent needs a server and a token before anything is downloaded or installed.
if [ "$COMMAND" = agent ]; then
	arg_server=
	arg_token=
	want=
	for arg in "$@"; do
		case $want in
		server) arg_server=$arg ;;
		token) arg_token=yes ;;
		esac
		want=
		case $arg in
		--server=*) arg_server=${arg#--server=} ;;
		--server | -s) want=server ;;
		-s=*) arg_server=${arg#-s=} ;;
		-s?*) arg_server=${arg#-s} ;;
		--token | --token-file | -t) want=token ;;
		--token=* | --token-file=* | -t?*) arg_token=yes ;;
		esac
	done
	config_server=
	config_token=
	for file in "${KONE_CONFIG:-/etc/kone/config.yaml}" /etc/kone/config.yaml.d/*.yaml; do
		[ -f "$file" ] || continue
		if grep -Eq '^server:[[:blank:]]*[^[:blank:]]' "$file"; then
			config_server=yes
		fi
		if grep -Eq '^token(-file)?:[[:blank:]]*[^[:blank:]]' "$file"; then
			config_token=yes
		fi
	done
	server_url=${arg_server:-${KONE_URL:-}}
	if [ -z "$server_url" ] && [ -z "$config_server" ]; then
		fatal "kone agent needs the server to join: set KONE_URL=https://SERVER:6443 (or pass --server)"
	fi
	if [ -n "$server_url" ]; then
		case $server_url in
		https://?*) ;;
		*) fatal "the server URL must start with https:// (such as https://SERVER:6443), not '$server_url'" ;;
		esac
	fi
	if [ -z "${KONE_TOKEN:-}" ] && [ -z "${KONE_TOKEN_FILE:-}" ] && [ -z "$arg_token" ] && [ -z "$config_token" ]; then
		fatal "kone agent needs a join token: set KONE_TOKEN (or KONE_TOKEN_FILE, or pass --token or --token-file) to the token in the server's /var/lib/kone/server/token"
	fi
	if [ -z "${KONE_TOKEN:-}" ] && [ -z "$arg_token" ] && [ -z "$config_token" ] && [ -n "${KONE_TOKEN_FILE:-}" ]; then
		case $KONE_TOKEN_FILE in
		/*) ;;
		*) fatal "KONE_TOKEN_FILE must be an absolute path (the service does not start in this directory), not '$KONE_TOKEN_FILE'" ;;
		esac
		if [ ! -s "$KONE_TOKEN_FILE" ]; then
			fatal "KONE_TOKEN_FILE names $KONE_TOKEN_FILE, which is missing or empty: copy the server's /var/lib/kone/server/token there first"
		fi
	fi
fi

# The arguments as a systemd command line, as shell words, and as shown to the user (tokens
# hidden).
ARGS_SYSTEMD=
ARGS_SH=
ARGS_SHOWN=
TOKEN_ON_COMMAND_LINE=
hide_next=
for arg in "$@"; do
	quote_systemd "$arg"
	ARGS_SYSTEMD="$ARGS_SYSTEMD $REPLY"
	quote_sh "$arg"
	ARGS_SH="$ARGS_SH $REPLY"
	if [ -n "$hide_next" ]; then
		REPLY='<token>'
		hide_next=
	fi
	case $arg in
	--token | -t)
		hide_next=yes
		TOKEN_ON_COMMAND_LINE=yes
		;;
	--token=*)
		REPLY='--token=<token>'
		TOKEN_ON_COMMAND_LINE=yes
		;;
	-t?*)
		REPLY='-t<token>'
		TOKEN_ON_COMMAND_LINE=yes
		;;
	esac
	ARGS_SHOWN="$ARGS_SHOWN $REPLY"
done

# --- settings --------------------------------------------------------------------------------

if [ "$(id -u)" -ne 0 ]; then
	fatal "the installer must run as root: curl -sfL .../install.sh | sudo sh -s - $COMMAND ..."
fi

BIN_DIR=${INSTALL_KONE_BIN_DIR:-/usr/local/bin}
case $BIN_DIR in
/*) ;;
*) fatal "INSTALL_KONE_BIN_DIR must be an absolute path, not '$BIN_DIR'" ;;
esac
KONE=$BIN_DIR/kone

if [ -n "${INSTALL_KONE_NAME:-}" ]; then
	case $INSTALL_KONE_NAME in
	*[!A-Za-z0-9_-]* | -*) fatal "INSTALL_KONE_NAME may hold letters, digits, '_' and '-' only, not '$INSTALL_KONE_NAME'" ;;
	kone | kone-*) SERVICE=$INSTALL_KONE_NAME ;;
	*) SERVICE=kone-$INSTALL_KONE_NAME ;;
	esac
elif [ "$COMMAND" = agent ]; then
	SERVICE='kone-agent'
else
	SERVICE=kone
fi

script_path() { # script_path SETTING DEFAULT_NAME: a name goes into the bin dir
	case ${1:-$2} in
	*/*) REPLY=${1:-$2} ;;
	*) REPLY=$BIN_DIR/${1:-$2} ;;
	esac
}
script_path "${INSTALL_KONE_KILLALL_SH:-}" kone-killall.sh
KILLALL_SH=$REPLY
script_path "${INSTALL_KONE_UNINSTALL_SH:-}" "$SERVICE-uninstall.sh"
UNINSTALL_SH=$REPLY

SYSTEMD_DIR=${INSTALL_KONE_SYSTEMD_DIR:-/etc/systemd/system}
OPENRC_DIR=${INSTALL_KONE_OPENRC_DIR:-/etc/init.d}
if [ -n "${INSTALL_KONE_SYSTEMD_DIR:-}" ]; then
	INIT_SYSTEM=systemd
elif [ -n "${INSTALL_KONE_OPENRC_DIR:-}" ]; then
	INIT_SYSTEM=openrc
elif [ -d /run/systemd/system ]; then
	INIT_SYSTEM=systemd
elif [ -x /sbin/openrc-run ]; then
	INIT_SYSTEM=openrc
else
	INIT_SYSTEM=none
fi
for dir in "$SYSTEMD_DIR" "$OPENRC_DIR"; do
	case $dir in
	/*) ;;
	*) fatal "INSTALL_KONE_SYSTEMD_DIR and INSTALL_KONE_OPENRC_DIR must be absolute paths, not '$dir'" ;;
	esac
done
case $INIT_SYSTEM in
systemd)
	SERVICE_FILE=$SYSTEMD_DIR/$SERVICE.service
	ENV_FILE=$SYSTEMD_DIR/$SERVICE.service.env
	;;
openrc)
	SERVICE_FILE=$OPENRC_DIR/$SERVICE
	ENV_FILE=/etc/kone/$SERVICE.env
	;;
none)
	SERVICE_FILE=
	ENV_FILE=/etc/kone/$SERVICE.env
	;;
esac

# --- download ------------------------------------------------------------------------------

TMP_DIR=
cleanup() {
	if [ -n "$TMP_DIR" ]; then
		rm -rf "$TMP_DIR"
	fi
	rm -f "$BIN_DIR/.kone.tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

detect_arch() {
	machine=$(uname -m)
	case $machine in
	x86_64 | amd64) ARCH=amd64 ;;
	aarch64 | arm64) ARCH=arm64 ;;
	# armv8l: a 32-bit userland on a 64-bit Arm kernel runs the arm (v7) build.
	armv7* | armv8l | armhf) ARCH=arm ;;
	*) fatal "kone has no release for this machine's architecture ($machine): there are amd64, arm64 and arm (v7)" ;;
	esac
}

download() { # download URL FILE
	info "Downloading $1"
	case $DOWNLOADER in
	curl) curl -fsSL --retry 3 --connect-timeout 30 -o "$2" "$1" ;;
	wget) wget -q -T 30 -O "$2" "$1" ;;
	esac || fatal "download of $1 failed"
}

sha256_of() {
	case $SHA256 in
	sha256sum) sha256sum "$1" ;;
	shasum) shasum -a 256 "$1" ;;
	openssl) openssl dgst -sha256 -r "$1" ;;
	esac | awk '{ print tolower($1) }'
}

install_release() {
	detect_arch
	if command -v curl >/dev/null 2>&1; then
		DOWNLOADER=curl
	elif command -v wget >/dev/null 2>&1; then
		DOWNLOADER=wget
	else
		fatal "neither curl nor wget found: install one of them, or put kone at $KONE and set INSTALL_KONE_SKIP_DOWNLOAD=true"
	fi
	if command -v sha256sum >/dev/null 2>&1; then
		SHA256=sha256sum
	elif command -v shasum >/dev/null 2>&1; then
		SHA256=shasum
	elif command -v openssl >/dev/null 2>&1; then
		SHA256=openssl
	else
		fatal "no sha256sum, shasum or openssl found to check the download with"
	fi

	if [ -n "${INSTALL_KONE_DOWNLOAD_URL:-}" ]; then
		base=${INSTALL_KONE_DOWNLOAD_URL%/}
	elif [ -n "${INSTALL_KONE_VERSION:-}" ]; then
		base=$GITHUB_URL/releases/download/$INSTALL_KONE_VERSION
	else
		base=$GITHUB_URL/releases/latest/download
	fi
	file=kone-linux-$ARCH
	if command -v zstd >/dev/null 2>&1; then
		file=$file.zst
	fi
	sums=sha256sum-$ARCH.txt

	TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kone-install.XXXXXXXX")
	download "$base/$sums" "$TMP_DIR/$sums"
	download "$base/$file" "$TMP_DIR/$file"

	expected=$(awk -v f="$file" '$2 == f || $2 == "*" f { print tolower($1); exit }' "$TMP_DIR/$sums")
	if [ ${#expected} -ne 64 ] || [ -n "$(printf '%s' "$expected" | tr -d '0-9a-f')" ]; then
		fatal "$sums has no sha256 checksum for $file: nothing was installed"
	fi
	actual=$(sha256_of "$TMP_DIR/$file")
	if [ "$actual" != "$expected" ]; then
		fatal "sha256 checksum mismatch for $file: $sums says $expected, the download has $actual; nothing was installed"
	fi
	info "Checked the sha256 checksum of $file"

	if [ "$file" != "${file%.zst}" ]; then
		zstd -d -q -o "$TMP_DIR/kone" "$TMP_DIR/$file" || fatal "could not decompress $file"
	else
		mv "$TMP_DIR/$file" "$TMP_DIR/kone"
	fi

	mkdir -p "$BIN_DIR"
	cp "$TMP_DIR/kone" "$BIN_DIR/.kone.tmp"
	chmod 0755 "$BIN_DIR/.kone.tmp"
	if ! version=$("$BIN_DIR/.kone.tmp" --version 2>&1); then
		fatal "the downloaded kone does not run on this machine ($version); nothing was installed"
	fi
	mv -f "$BIN_DIR/.kone.tmp" "$KONE"
	info "Installed $KONE: $(printf '%s\n' "$version" | head -n 1)"
}

if is_true "${INSTALL_KONE_SKIP_DOWNLOAD:-}"; then
	if [ ! -f "$KONE" ]; then
		fatal "INSTALL_KONE_SKIP_DOWNLOAD is set, but there is no $KONE: put the kone binary for this machine there first"
	fi
	chmod 0755 "$KONE"
	if ! version=$("$KONE" --version 2>&1); then
		fatal "$KONE does not run on this machine: $version"
	fi
	info "Using $KONE: $(printf '%s\n' "$version" | head -n 1)"
else
	install_release
fi

# --- links, scripts ------------------------------------------------------------------------------

# LINKS lists the links of this installation: made now, or made by an earlier run.
LINKS=
if ! is_true "${INSTALL_KONE_SKIP_SYMLINK:-}"; then
	for cmd in kubectl ctr; do
		link=$BIN_DIR/$cmd
		if [ -L "$link" ] && [ "$(readlink "$link")" = "$KONE" ]; then
			LINKS="$LINKS $cmd"
		elif [ -e "$link" ] || [ -L "$link" ]; then
			info "Leaving $link alone: it is not a link to kone"
		elif other=$(command -v "$cmd" 2>/dev/null); then
			info "Not linking $cmd to kone: $other exists (use: kone $cmd)"
		else
			ln -s "$KONE" "$link"
			info "Linked $link to kone"
			LINKS="$LINKS $cmd"
		fi
	done
fi
LINKS=${LINKS# }

# write_script_header FILE: the settings every generated script works with.
write_script_header() {
	{
		echo '#!/bin/sh'
		printf "# Written by kone's install.sh for the service %s.\n" "$SERVICE"
		quote_sh "$INIT_SYSTEM"
		printf 'INIT_SYSTEM=%s\n' "$REPLY"
		quote_sh "$SYSTEMD_DIR"
		printf 'SYSTEMD_DIR=%s\n' "$REPLY"
		quote_sh "$OPENRC_DIR"
		printf 'OPENRC_DIR=%s\n' "$REPLY"
	} >"$1"
}

write_killall() {
	write_script_header "$KILLALL_SH.tmp"
	cat >>"$KILLALL_SH.tmp" <<'EOF'
# Stops the kone services and everything they started: containers, mounts, network links,
# iptables rules and nftables tables. Safe to run when nothing is running.

if [ "$(id -u)" -ne 0 ]; then
	echo "[ERROR] $0 must run as root" >&2
	exit 1
fi

info() {
	printf '[INFO]  %s\n' "$*"
}

# Stop the services first, so nothing restarts what is killed below.
case $INIT_SYSTEM in
systemd)
	for unit in "$SYSTEMD_DIR"/kone.service "$SYSTEMD_DIR"/kone-*.service; do
		[ -f "$unit" ] || continue
		info "Stopping ${unit##*/}"
		systemctl stop "${unit##*/}" || true
	done
	;;
openrc)
	for script in "$OPENRC_DIR"/kone "$OPENRC_DIR"/kone-*; do
		[ -f "$script" ] || continue
		info "Stopping ${script##*/}"
		rc-service "${script##*/}" stop || true
	done
	;;
esac

# proc_parents prints "PID PPID" for every process.
proc_parents() {
	cat /proc/[0-9]*/stat 2>/dev/null |
		sed -n 's/^\([0-9][0-9]*\) .*) [A-Za-z] \([0-9][0-9]*\) .*/\1 \2/p'
}

# with_descendants PID...: the processes given and all their descendants.
with_descendants() {
	proc_parents | awk -v roots="$*" '
		BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
		{ parent[$1] = $2 }
		END {
			do {
				more = 0
				for (p in parent)
					if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; more = 1 }
			} while (more)
			for (p in keep) if (p in parent) print p
		}'
}

# find_processes sets KONE_PIDS (kone servers and agents, and kone's containerd) and SHIM_PIDS
# (kone's containerd shims, which hold the containers: those that kone's data dir carries, or
# that serve kone's containerd socket, wherever the data dir is).
# Only processes of this machine's mount namespace: a kone running in a container here has
# its own, and its own killall.
find_processes() {
	KONE_PIDS=
	SHIM_PIDS=
	for dir in /proc/[0-9]*; do
		pid=${dir#/proc/}
		[ "$pid" != "$$" ] || continue
		exe=$(readlink "$dir/exe" 2>/dev/null) || continue
		exe=${exe% (deleted)}
		case $exe in
		*/containerd-shim-runc-v2 | */kone) ;;
		*) continue ;;
		esac
		[ "$(readlink "$dir/ns/mnt" 2>/dev/null)" = "$MOUNT_NS" ] || continue
		case $exe in
		/var/lib/kone/*/containerd-shim-runc-v2)
			SHIM_PIDS="$SHIM_PIDS $pid"
			continue
			;;
		*/containerd-shim-runc-v2)
			if tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | grep -q ' /run/kone/containerd/containerd\.sock '; then
				SHIM_PIDS="$SHIM_PIDS $pid"
			fi
			continue
			;;
		esac
		argv0=$(tr '\0' '\n' <"$dir/cmdline" 2>/dev/null | sed -n 1p)
		subcommand=$(tr '\0' '\n' <"$dir/cmdline" 2>/dev/null | awk 'NR > 1 && !/^-/ { print; exit }')
		case ${argv0##*/}:$subcommand in
		containerd:* | kone:server | kone:agent) KONE_PIDS="$KONE_PIDS $pid" ;;
		esac
	done
}

MOUNT_NS=$(readlink /proc/self/ns/mnt)
find_processes
if [ -n "$KONE_PIDS" ]; then
	# shellcheck disable=SC2086
	tree=$(with_descendants $KONE_PIDS)
	info "Stopping kone processes:$KONE_PIDS"
	# shellcheck disable=SC2086
	kill -TERM $KONE_PIDS 2>/dev/null || true
	waited=0
	while [ $waited -lt 10 ]; do
		find_processes
		[ -n "$KONE_PIDS" ] || break
		sleep 1
		waited=$((waited + 1))
	done
	# What is left of them, and their children (kone's containerd), is killed.
	# shellcheck disable=SC2086
	kill -KILL $tree $KONE_PIDS 2>/dev/null || true
fi
find_processes
if [ -n "$SHIM_PIDS" ]; then
	info "Killing the containers' shims and their processes:$SHIM_PIDS"
	# shellcheck disable=SC2046,SC2086
	kill -KILL $(with_descendants $SHIM_PIDS) 2>/dev/null || true
fi

# Unmount everything below kone's and kubelet's directories, deepest first.
awk '{ print $2 }' /proc/self/mounts | while read -r mnt; do
	case $mnt in
	/run/kone/* | /var/lib/kone/* | /var/lib/kubelet/* | /run/netns/cni-*) printf '%s\n' "$mnt" ;;
	esac
done | LC_ALL=C sort -r | while read -r mnt; do
	mnt=$(printf '%b.' "$mnt") # /proc/self/mounts writes a space as \040
	mnt=${mnt%.}
	umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || echo "[WARN]  could not unmount $mnt" >&2
	case $mnt in
	/run/netns/cni-*) rm -f "$mnt" ;;
	esac
done

# The pod network's links.
if command -v ip >/dev/null 2>&1; then
	ip -o link show master cni0 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' |
		while read -r link; do
			case $link in
			veth*) ip link delete "$link" 2>/dev/null || true ;;
			esac
		done
	for link in cni0 flannel.1 flannel-v6.1; do
		if ip link show "$link" >/dev/null 2>&1; then
			info "Deleting link $link"
			ip link delete "$link" || true
		fi
	done
fi

# The iptables rules and chains of kone, kube-proxy, the CNI plugins and flannel, in every
# iptables backend there is.
for ipt in iptables iptables-legacy iptables-nft ip6tables ip6tables-legacy ip6tables-nft; do
	if ! command -v "$ipt-save" >/dev/null 2>&1 || ! command -v "$ipt-restore" >/dev/null 2>&1; then
		continue
	fi
	rules=$("$ipt-save" 2>/dev/null) || continue
	printf '%s\n' "$rules" | grep -q -e 'KUBE-' -e 'KONE-' -e 'CNI-' -e 'FLANNEL' || continue
	info "Deleting kone's rules from $ipt"
	printf '%s\n' "$rules" | grep -v -e 'KUBE-' -e 'KONE-' -e 'CNI-' -e 'FLANNEL' |
		"$ipt-restore" || echo "[WARN]  could not restore $ipt without kone's rules" >&2
done

# kube-proxy's tables in nftables mode, and kone's NetworkPolicy table.
if command -v nft >/dev/null 2>&1; then
	for table in "ip kube-proxy" "ip6 kube-proxy" "ip kone-netpol"; do
		# shellcheck disable=SC2086 # a family and a name
		if nft list table $table >/dev/null 2>&1; then
			info "Deleting nftables table $table"
			# shellcheck disable=SC2086
			nft delete table $table || true
		fi
	done
fi

rm -rf /var/lib/cni
exit 0
EOF
	chmod 0755 "$KILLALL_SH.tmp"
	mv -f "$KILLALL_SH.tmp" "$KILLALL_SH"
	info "Wrote $KILLALL_SH"
}

write_uninstall() {
	write_script_header "$UNINSTALL_SH.tmp"
	{
		quote_sh "$BIN_DIR"
		printf 'BIN_DIR=%s\n' "$REPLY"
		quote_sh "$KILLALL_SH"
		printf 'KILLALL_SH=%s\n' "$REPLY"
		quote_sh "$SERVICE"
		printf 'SERVICE=%s\n' "$REPLY"
		quote_sh "$SERVICE_FILE"
		printf 'SERVICE_FILE=%s\n' "$REPLY"
		quote_sh "$ENV_FILE"
		printf 'ENV_FILE=%s\n' "$REPLY"
		quote_sh "$UNINSTALL_SH"
		printf 'UNINSTALL_SH=%s\n' "$REPLY"
		echo "# The links to kone that the installer made."
		quote_sh "$LINKS"
		printf 'LINKS=%s\n' "$REPLY"
		cat <<'EOF'
# Removes the kone service this script was written for. When no other kone service remains it
# also removes kone itself: its binary, links and scripts, its containers, and its data.
set -e

if [ "$(id -u)" -ne 0 ]; then
	echo "[ERROR] $0 must run as root" >&2
	exit 1
fi

info() {
	printf '[INFO]  %s\n' "$*"
}

# Other kone services on this machine (say, a server and an agent) share the binary and the data.
OTHERS=
for file in "$SYSTEMD_DIR"/kone.service "$SYSTEMD_DIR"/kone-*.service "$OPENRC_DIR"/kone "$OPENRC_DIR"/kone-* \
	"$BIN_DIR"/kone-uninstall.sh "$BIN_DIR"/kone-*-uninstall.sh; do
	[ -f "$file" ] || continue
	case $file in
	"$SERVICE_FILE" | "$UNINSTALL_SH") continue ;;
	esac
	OTHERS="$OTHERS ${file##*/}"
done

case $INIT_SYSTEM in
systemd)
	info "Removing the systemd service $SERVICE"
	systemctl stop "$SERVICE" || true
	systemctl disable "$SERVICE" || true
	rm -f "$SERVICE_FILE" "$ENV_FILE"
	systemctl daemon-reload || true
	systemctl reset-failed "$SERVICE" >/dev/null 2>&1 || true
	;;
openrc)
	info "Removing the OpenRC service $SERVICE"
	rc-service "$SERVICE" stop || true
	rc-update delete "$SERVICE" default || true
	rm -f "$SERVICE_FILE" "$ENV_FILE" "/var/log/$SERVICE.log"
	;;
*)
	rm -f "$ENV_FILE"
	;;
esac

if [ -n "$OTHERS" ]; then
	info "Keeping kone, its links and its data for what remains:$OTHERS"
	rm -f "$UNINSTALL_SH"
	exit 0
fi

if [ -f "$KILLALL_SH" ]; then
	sh "$KILLALL_SH"
fi

for cmd in $LINKS; do
	link=$BIN_DIR/$cmd
	if [ -L "$link" ] && [ "$(readlink "$link")" = "$BIN_DIR/kone" ]; then
		rm -f "$link"
	fi
done
rm -f "$BIN_DIR/kone" "$KILLALL_SH"

# remove_dir DIR: DIR and everything in it; a mount point is left empty.
remove_dir() {
	[ -e "$1" ] || return 0
	find "$1" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} + || echo "[WARN]  could not remove all of $1" >&2
	rmdir -- "$1" 2>/dev/null || info "Left $1 empty: it is a mount point"
}
for dir in /etc/kone /var/lib/kone /run/kone /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers; do
	remove_dir "$dir"
done

rm -f "$UNINSTALL_SH"
info "Uninstalled kone"
EOF
	} >>"$UNINSTALL_SH.tmp"
	chmod 0755 "$UNINSTALL_SH.tmp"
	mv -f "$UNINSTALL_SH.tmp" "$UNINSTALL_SH"
	info "Wrote $UNINSTALL_SH"
}

mkdir -p "$(dirname "$KILLALL_SH")" "$(dirname "$UNINSTALL_SH")"
write_killall
write_uninstall

# --- service ---------------------------------------------------------------------------------

# write_env_file: every KONE_* variable of the installer's environment, for the service only.
write_env_file() {
	mkdir -p "$(dirname "$ENV_FILE")"
	rm -f "$ENV_FILE"
	(
		umask 077
		env | sed -n 's/^\(KONE_[A-Za-z0-9_]*\)=.*/\1/p' | sort -u | while read -r name; do
			# A line of a multi-line value may look like a name; only set variables count.
			isset=
			value=
			eval "isset=\${$name+yes}"
			[ "$isset" = yes ] || continue
			eval "value=\$$name"
			quote_dq "$value"
			printf '%s="%s"\n' "$name" "$REPLY"
		done >"$ENV_FILE"
	)
	chmod 0600 "$ENV_FILE"
	names=$(sed -n 's/^\(KONE_[A-Za-z0-9_]*\)=.*/\1/p' "$ENV_FILE" | tr '\n' ' ')
	if [ -n "$names" ]; then
		info "Wrote $ENV_FILE (mode 0600) with ${names% }"
	else
		info "Wrote $ENV_FILE (mode 0600), empty: there are no KONE_* variables"
	fi
}

write_systemd_unit() {
	quote_systemd "$KONE"
	exec_start="$REPLY $COMMAND$ARGS_SYSTEMD"
	umask 022
	cat >"$SERVICE_FILE.tmp" <<EOF
[Unit]
Description=kone $COMMAND: Kubernetes in one binary
Documentation=$DOCS_URL
Wants=network-online.target
After=network-online.target

[Service]
# kone tells systemd when it is ready (sd_notify READY=1).
Type=notify
EnvironmentFile=-$ENV_FILE
# Containers run under their own shims and outlive a restart of kone.
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$exec_start

[Install]
WantedBy=multi-user.target
EOF
	mv -f "$SERVICE_FILE.tmp" "$SERVICE_FILE"
	info "Wrote $SERVICE_FILE"
}

write_openrc_service() {
	quote_dq "$COMMAND$ARGS_SH"
	args=$REPLY
	quote_dq "$KONE"
	kone=$REPLY
	quote_dq "$ENV_FILE"
	env_file=$REPLY
	umask 022
	cat >"$SERVICE_FILE.tmp" <<EOF
#!/sbin/openrc-run
# Written by kone's install.sh.

description="kone $COMMAND: Kubernetes in one binary"
supervisor=supervise-daemon
command="$kone"
command_args="$args"
pidfile="/run/$SERVICE.pid"
output_log="/var/log/$SERVICE.log"
error_log="/var/log/$SERVICE.log"
respawn_delay=5
respawn_max=0
rc_ulimit="-n 1048576 -u unlimited -c unlimited"

if [ -f "$env_file" ]; then
	set -a
	. "$env_file"
	set +a
fi

depend() {
	need net
	after firewall network-online
}

start_pre() {
	modprobe -q br_netfilter 2>/dev/null || :
	modprobe -q overlay 2>/dev/null || :
}
EOF
	chmod 0755 "$SERVICE_FILE.tmp"
	mv -f "$SERVICE_FILE.tmp" "$SERVICE_FILE"
	info "Wrote $SERVICE_FILE"
}

if [ -n "$TOKEN_ON_COMMAND_LINE" ]; then
	warn "the join token is on kone's command line, which every user can read (in the service file and in ps); KONE_TOKEN keeps it in a file only root can read"
fi

write_env_file
case $INIT_SYSTEM in
systemd)
	mkdir -p "$SYSTEMD_DIR"
	write_systemd_unit
	systemctl daemon-reload
	if is_true "${INSTALL_KONE_SKIP_ENABLE:-}"; then
		info "Not enabling or starting $SERVICE (INSTALL_KONE_SKIP_ENABLE)"
	else
		info "Enabling $SERVICE"
		systemctl enable "$SERVICE"
		if is_true "${INSTALL_KONE_SKIP_START:-}"; then
			info "Not starting $SERVICE (INSTALL_KONE_SKIP_START): systemctl start $SERVICE"
		else
			info "Starting $SERVICE: journalctl -u $SERVICE -f shows its log"
			systemctl restart "$SERVICE"
		fi
	fi
	;;
openrc)
	mkdir -p "$OPENRC_DIR"
	write_openrc_service
	if is_true "${INSTALL_KONE_SKIP_ENABLE:-}"; then
		info "Not enabling or starting $SERVICE (INSTALL_KONE_SKIP_ENABLE)"
	else
		info "Enabling $SERVICE"
		rc-update add "$SERVICE" default >/dev/null
		if is_true "${INSTALL_KONE_SKIP_START:-}"; then
			info "Not starting $SERVICE (INSTALL_KONE_SKIP_START): rc-service $SERVICE start"
		else
			info "Starting $SERVICE: its log is /var/log/$SERVICE.log"
			rc-service "$SERVICE" restart
		fi
	fi
	;;
none)
	quote_sh "$ENV_FILE"
	env_file=$REPLY
	quote_sh "$KONE"
	kone=$REPLY
	info "Found neither systemd nor OpenRC: kone is installed, but nothing starts it."
	info "Start it by hand, as root, with the settings in $ENV_FILE:"
	printf '\n    (set -a; . %s; exec %s %s%s)\n\n' "$env_file" "$kone" "$COMMAND" "$ARGS_SHOWN"
	if [ -n "$TOKEN_ON_COMMAND_LINE" ]; then
		info "(with your token in place of <token>)"
	fi
	;;
esac

info "Done. Remove kone with $UNINSTALL_SH"
