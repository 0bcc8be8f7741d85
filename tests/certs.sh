#!/bin/sh
# certs.sh DIR: a throwaway test PKI (EC P-256, valid 2 days) for the
# integration tests. Idempotent: does nothing when DIR already holds it.
#
#   ca.pem ca.key                    "mailshim test CA"
#   other-ca.pem other-ca.key        an unrelated CA
#   server.pem server.key            localhost, shim.test, 127.0.0.1, ::1 (listener)
#   upstream.pem upstream.key        legacy.test, 127.0.0.1, by ca
#   wrongname.pem wrongname.key      other.test only, by ca
#   otherca-upstream.pem .key        legacy.test, 127.0.0.1, by other-ca
#   client.pem client.key            a TLS client certificate, by ca
#   alt.pem alt.key                  alt.test only, by ca (a second listener name)
#   otherca-client.pem .key          a TLS client certificate, by other-ca
#   NAME-chain.pem                   NAME.pem followed by NAME.key
set -eu

dir=${1:?usage: certs.sh DIR}
names="server upstream wrongname otherca-upstream client alt otherca-client"

pki_complete() {
	for f in ca.pem ca.key other-ca.pem other-ca.key; do
		[ -s "$dir/$f" ] || return 1
	done
	for n in $names; do
		for f in "$n.pem" "$n.key" "$n-chain.pem"; do
			[ -s "$dir/$f" ] || return 1
		done
	done
}

pki_complete && exit 0
mkdir -p "$dir"

# Build in a private directory and move the files in at the end, so a
# concurrent or interrupted run never leaves a half-made PKI behind.
tmp=$(mktemp -d "$dir/.certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF

run() {
	# openssl chats on stderr even on success; show it only on failure.
	if ! "$@" >log 2>&1; then
		cat log >&2
		echo "certs.sh: failed: $*" >&2
		exit 1
	fi
}

key() {
	run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
}

ca() {  # ca NAME "COMMON NAME"
	key "$1"
	run openssl req -config openssl.cnf -x509 -new -key "$1.key" -subj "/CN=$2" \
	    -days 2 -sha256 -extensions ca_ext -out "$1.pem"
}

leaf() {  # leaf NAME CA SAN EKU
	key "$1"
	run openssl req -config openssl.cnf -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
	cat >"$1.ext" <<EOF
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = $4
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
	[ -z "$3" ] || echo "subjectAltName = $3" >>"$1.ext"
	serial=0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
	run openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" \
	    -set_serial "$serial" -days 2 -sha256 -extfile "$1.ext" -out "$1.pem"
	cat "$1.pem" "$1.key" >"$1-chain.pem"
}

ca ca "mailshim test CA"
ca other-ca "mailshim other test CA"
leaf server ca "DNS:localhost, DNS:shim.test, IP:127.0.0.1, IP:::1" serverAuth
leaf upstream ca "DNS:legacy.test, IP:127.0.0.1" serverAuth
leaf wrongname ca "DNS:other.test" serverAuth
leaf otherca-upstream other-ca "DNS:legacy.test, IP:127.0.0.1" serverAuth
leaf client ca "DNS:client.test" clientAuth
leaf alt ca "DNS:alt.test" serverAuth
leaf otherca-client other-ca "DNS:client.test" clientAuth

# Throwaway keys, readable by peers that drop to nobody.
chmod 644 ./*.pem ./*.key
for f in ca.pem ca.key other-ca.pem other-ca.key; do mv -f "$f" "$dir/$f"; done
for n in $names; do
	for f in "$n.pem" "$n.key" "$n-chain.pem"; do mv -f "$f" "$dir/$f"; done
done
