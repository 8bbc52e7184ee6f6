# Sourced by the bench scripts: builds the release server and load generator and sets BIN, LOAD
# and WORK (a fresh temporary directory).
cargo build --release --locked -q -p service-accounts-api -p service-accounts-loadgen
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/service-accounts
LOAD=${CARGO_TARGET_DIR:-$PWD/target}/release/loadgen
WORK=$(mktemp -d)
