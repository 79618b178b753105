# Sourced by the demos (`. scripts/build.sh` from the repository root):
# installs what ferry needs (setup.sh), builds every binary with $PROFILE
# (release unless set; dev for a debug build) and sets BIN to their folder.
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
PROFILE="${PROFILE:-release}"
cargo build --workspace --bins --profile "$PROFILE"
BIN="$PWD/target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
