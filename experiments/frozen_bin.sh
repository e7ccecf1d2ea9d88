# Sourced by the experiment scripts whose runs span sessions: sets BIN, unless given, to a copy
# of a fresh release build kept in $OUT (made once), so that later rebuilds cannot change the runs
# of an interrupted study when it resumes.
if [ -z "${BIN:-}" ]; then
  if [ ! -x "$OUT/dydiff" ]; then
    cargo build --release --quiet
    cp target/release/dydiff "$OUT/dydiff"
  fi
  BIN=$OUT/dydiff
fi
