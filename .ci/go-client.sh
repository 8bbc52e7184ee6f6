#!/usr/bin/env bash
# Go client check: generates Go code from proto/ exactly as a Go team would (protoc with Debian's
# protoc-gen-go and protoc-gen-go-grpc, the import path taken from each file's go_package), then
# compiles clients/go/examples/walkthrough against Debian's grpc-go in GOPATH mode, offline.
# When SERVICE_ACCOUNTS_ADDR and ADMIN_JWT are set (as .ci/run exports them for the live server),
# it also runs the walkthrough against that server. Runnable from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages; installed only when missing, so a prepared CI image pays nothing here.
# protoc-gen-go is the APIv2 generator (google.golang.org/protobuf 1.28); its runtime is
# golang-google-protobuf-dev, and golang-github-golang-protobuf-1-5-dev is the github.com/golang/
# protobuf that matches it (grpc-go needs one of the 1.3 or 1.5 lines; 1.3 would not match).
packages=(golang-go protobuf-compiler libprotobuf-dev protoc-gen-go protoc-gen-go-grpc
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-grpc-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "$(go version); protoc $(protoc --version); $(protoc-gen-go --version); $(protoc-gen-go-grpc --version)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gopath="$work/gopath"
mkdir -p "$gopath/src"

# What clients/go/README.md tells a Go team to run: the well-known types come from protoc's own
# include directory (/usr/include, Debian's libprotobuf-dev); output lands under the go_package
# import path (paths=import, the default), here embrace.io/go/serviceaccounts/apiv1/serviceaccountspb.
protoc -I proto \
  --go_out="$gopath/src" --go_opt=paths=import \
  --go-grpc_out="$gopath/src" --go-grpc_opt=paths=import \
  proto/embrace/serviceaccounts/v1/*.proto
pkg=embrace.io/go/serviceaccounts/apiv1/serviceaccountspb
echo "generated: $(find "$gopath/src/$pkg" -name '*.go' | wc -l | tr -d ' ') files in $pkg"

# GOPATH mode against Debian's Go libraries in /usr/share/gocode: no module proxy, no network.
export GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode"
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-accounts-ci/go-build}"
go vet "$pkg" ./clients/go/examples/walkthrough
go build -o "$work/walkthrough" ./clients/go/examples/walkthrough
echo "go client: generated package and clients/go/examples/walkthrough compile"

if [ -n "${SERVICE_ACCOUNTS_ADDR:-}" ] && [ -n "${ADMIN_JWT:-}" ]; then
  "$work/walkthrough"
else
  echo "go client: SERVICE_ACCOUNTS_ADDR and ADMIN_JWT not both set, walkthrough not run"
fi
