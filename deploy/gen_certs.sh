#!/usr/bin/env bash
# Generate the TLS and SuperNode-authentication material for a one-host deployment.
#
# Usage: deploy/gen_certs.sh OUTDIR NUM_NODES [EXTRA_SANS]
#   EXTRA_SANS: more names the server certificate is valid for, e.g.
#   "DNS:flower.example.org,IP:192.168.1.10" (a SuperLink other devices reach) or
#   "DNS:superlink,DNS:supernode-0,DNS:supernode-1" (deploy/compose.yaml).
#
# Writes into OUTDIR:
#   ca.crt, ca.key             self-signed CA (EC P-384)
#   server.crt, server.key     SuperLink certificate for 127.0.0.1 / localhost, signed by the CA
#   node-I, node-I.pub         I = 0..NUM_NODES-1: SuperNode authentication key pair,
#                              ECDSA P-384 in OpenSSH format (what flower-supernode
#                              --auth-supernode-private-key and `flwr supernode register` read)
# Existing files are overwritten. Needs openssl; ssh-keygen if present, else the
# `cryptography` package of the project's venv, writes the OpenSSH key pairs.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 || ! "$2" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 OUTDIR NUM_NODES [EXTRA_SANS]" >&2
    exit 2
fi
out=$1
num_nodes=$2
sans="IP:127.0.0.1, DNS:localhost${3:+, $3}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${FEDMASK_PYTHON:-$here/../.venv/bin/python}

mkdir -p "$out"
umask 077
cd "$out"
rm -f ca.srl

ext=$(mktemp)
trap 'rm -f "$ext" server.csr' EXIT

# CA
openssl ecparam -name secp384r1 -genkey -noout -out ca.key
cat >"$ext" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = fedmask local CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
openssl req -x509 -new -key ca.key -sha384 -days 365 -config "$ext" -extensions v3_ca \
    -out ca.crt

# SuperLink server certificate (127.0.0.1 / localhost)
openssl ecparam -name secp384r1 -genkey -noout -out server.key
openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha384 \
    -days 365 -extfile "$ext" -extensions v3_server -out server.crt 2>/dev/null
rm -f ca.srl
openssl verify -CAfile ca.crt server.crt >/dev/null

# SuperNode authentication key pairs (ECDSA P-384, OpenSSH format)
for ((i = 0; i < num_nodes; i++)); do
    rm -f "node-$i" "node-$i.pub"
    if command -v ssh-keygen >/dev/null; then
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedmask-node-$i" -f "node-$i"
    else
        "$python" - "node-$i" <<'EOF'
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP384R1())
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
with open(path + ".pub", "wb") as f:
    f.write(key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH)
            + b" fedmask-" + path.encode() + b"\n")
EOF
    fi
done
chmod 644 ca.crt server.crt ./*.pub 2>/dev/null || true
echo "$out: ca.crt server.crt server.key node-{0..$((num_nodes - 1))}[.pub]"
