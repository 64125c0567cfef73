# Shared by the device-call scripts: `source bench/gpu/lib.sh NAME` sets PYTHONPATH, OUT and the log
# folder L=$OUT/NAME, prints the card, and defines
#   log MSG...                     a timestamped line, also appended to $OUT/steps.log
#   build                          builds the kernels_cuda library once (logs under $L)
#   e2e NAME TIMEOUT ARGS...       bench.decode_e2e into $L/NAME (report) and $L/NAME.log; table rows to steps.log
#   pack                           tars $L into $OUT/NAME.tgz ($OUT brings back at most 8 files)
# JQUANT_COMMIT (the commit the run used) goes into the reports: the device copy's git metadata
# reports the session-start commit.
set -u
export PYTHONPATH=$PWD JQUANT_GPU_FIXTURES=${JQUANT_GPU_FIXTURES:-.gpu_fixtures}
OUT=${OUT:-/tmp/out}
NAME=${1:?usage: source bench/gpu/lib.sh NAME}
L=$OUT/$NAME
mkdir -p "$L"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
build() {
  log "build"
  timeout 200 python -c "from kernels_cuda.build import register; register()" > "$L/build.log" 2>&1
  log "rc=$?"
}
e2e() {
  local name=$1 t=$2; shift 2
  log "decode_e2e $name: $*"
  timeout "$t" python -m bench.decode_e2e --repeats 2 --out "$L/$name" "$@" > "$L/$name.log" 2>&1
  log "rc=$?"
  grep -E "^\| |tok/s" "$L/$name.log" | tail -8 | tee -a "$OUT/steps.log"
}
pack() { (cd "$OUT" && tar czf "$NAME.tgz" "$NAME" && rm -rf "$NAME"); }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/steps.log"
