#!/bin/sh
# make run: a throwaway dev certificate, a stand-in legacy mail server
# (Postfix's smtp-sink, plaintext only) and mailshim in front of it with
# the shipped conf.d/. Ctrl-C stops both.
set -eu
cd "$(dirname "$0")/.."
mkdir -p run
if [ ! -s run/mail.pem ] || [ ! -s run/mail.key ]; then
	echo "making a throwaway dev CA and certificate in run/"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-days 30 -subj "/CN=mailshim dev CA" -keyout run/dev-ca.key \
		-out run/dev-ca.pem -addext basicConstraints=critical,CA:TRUE 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-subj "/CN=localhost" -keyout run/mail.key -out run/mail.csr 2>/dev/null
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > run/mail.ext
	openssl x509 -req -in run/mail.csr -CA run/dev-ca.pem -CAkey run/dev-ca.key \
		-set_serial "$(date +%s)" -days 30 -extfile run/mail.ext \
		-out run/mail.pem 2>/dev/null
	rm -f run/mail.csr run/mail.ext
fi
./mailshim -t -c conf.d
sink=/usr/sbin/smtp-sink
[ -x "$sink" ] || sink=$(command -v smtp-sink)
as=""
[ "$(id -u)" = 0 ] && as="-u nobody"     # smtp-sink will not run as root
"$sink" $as -m 1000 127.0.0.1:10026 1000 </dev/null &
sinkpid=$!
trap 'kill $sinkpid 2>/dev/null || true' EXIT INT TERM
cat <<EOT

stand-in legacy server (smtp-sink, plaintext): 127.0.0.1:10026
try each front door (another terminal):
  swaks --server 127.0.0.1:10465 --tlsc --tls-verify --tls-ca-path run/dev-ca.pem --to you@example.test
  swaks --server 127.0.0.1:10587 --tls  --tls-verify --tls-ca-path run/dev-ca.pem --to you@example.test
  swaks --server 127.0.0.1:10025 --to you@example.test            (plaintext allowed on the MX door)
  swaks --server 127.0.0.1:10025 --tls --to you@example.test      (or with STARTTLS)

mailshim logs one line per session below; Ctrl-C stops.
EOT
./mailshim -c conf.d
