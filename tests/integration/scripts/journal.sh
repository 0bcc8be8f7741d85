#!/bin/sh
# journal.sh WORKDIR MAILSHIM CONFDIR PORT: run under `unshare -m`. A private
# journald (own /run, own /dev/log) receives the shim's syslog lines while one
# SMTP session goes through PORT; the journal ends up as WORKDIR/journal.json.
# Nothing of the machine's /dev or /run is changed.
set -eu
W=$1; M=$2; C=$3; P=$4
mkdir -p "$W/olddev"
mount --rbind /dev "$W/olddev"
mount -t tmpfs tmpfs /dev
for n in null zero urandom random full; do touch "/dev/$n"; mount --bind "$W/olddev/$n" "/dev/$n"; done
ln -s /proc/self/fd /dev/fd
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
/lib/systemd/systemd-journald >"$W/journald.out" 2>&1 &
J=$!
i=0; while [ ! -S /run/systemd/journal/dev-log ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
ln -s /run/systemd/journal/dev-log /dev/log
"$M" -c "$C" >"$W/shim.out" 2>&1 &
S=$!
i=0; while ! ss -ltn | grep -q ":$P " && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
swaks -s 127.0.0.1 -p "$P" -t rcpt@legacy.test -f sender@client.test --h-Subject journal >"$W/swaks.out" 2>&1 || true
sleep 1
kill -TERM $S; wait $S || true
journalctl --no-pager -o json -D /run/log/journal > "$W/journal.json" 2>&1 || journalctl --no-pager -o json > "$W/journal.json" 2>&1 || true
kill $J 2>/dev/null || true
