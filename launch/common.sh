# Sourced by the launchers: what local.sh and multinode.sh share.

# The first argument must be DATA, not a flag.
need_data() {
  local usage=$1
  shift
  if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $usage" >&2
    exit 2
  fi
}

# $1 an integer in $2..$3 (no upper bound when $3 is empty; too long for bash to compare: out of range).
int_in() {
  case "$1" in ''|*[!0-9]*) return 1 ;; esac
  [ "$1" -ge "$2" ] 2>/dev/null && { [ -z "${3:-}" ] || [ "$1" -le "$3" ]; }
}

# The variable named $1 an integer in $2..$3 (as int_in), else one line naming it and exit 2.
need_int() {
  local what="an integer >= $2"
  int_in "${!1-}" "$2" "${3:-}" && return 0
  if [ -n "${3:-}" ]; then what="an integer in $2..$3"; elif [ "$2" = 1 ]; then what="a positive integer"; fi
  echo "error: $1=${!1-}: expected $what" >&2
  exit 2
}

# imagenet18's per-process batch sizes and lrs were published for 8 processes per machine.
warn_unless_8() {
  case "$1" in
    */configs/imagenet18/*|configs/imagenet18/*) [ "$2" = 8 ] || echo "warning: $1 is tuned for 8 processes per machine (per-process batch sizes and lrs as published); running $2" >&2 ;;
  esac
}

# Socket interface for NCCL and gloo, and a fresh rendezvous store per restart attempt: with
# torchrun's shared store a restarted group can read a dead worker's address left by the failed
# attempt (pytorch/pytorch#135712). A plain IFNAME is a prefix to NCCL but an exact name to gloo, so
# it must be an interface of this machine (else every rank's gloo fails, at every restart); NCCL's
# other forms (^docker, =eth0, eth0,eth1) pass unchecked, as does a dry run (it may print the
# command for other machines) and a system without /sys/class/net.
network_env() {
  if [ -n "${IFNAME:-}" ]; then
    case "$IFNAME" in
      *[!A-Za-z0-9._-]*) ;;
      *) if [ -z "${LAUNCH_DRY_RUN:-}" ] && [ -d /sys/class/net ] && [ ! -e "/sys/class/net/$IFNAME" ]; then
           echo "error: IFNAME=$IFNAME: no such network interface here (there are: $(cd /sys/class/net && echo *))" >&2
           exit 2
         fi ;;
    esac
    export NCCL_SOCKET_IFNAME=$IFNAME GLOO_SOCKET_IFNAME=$IFNAME
  fi
  export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
}

# Check train.py's command line once, before torchrun (train.py --check: the schedule, the recipe's
# settings and --arch; a GPU for each of this machine's PROCS processes, counted, none opened; DATA's
# folders, a --resume file, a logdir free for a new run; no images; a few seconds, torch's import): an
# error there would otherwise be said by every rank and restart the group MAX_RESTARTS times.
# REJOINING=1 (multinode.sh) adds --rejoin: the logdir and a --resume file are left to the ranks,
# since a machine started anew joins a group whose run already fills the logdir (only the ranks can
# tell it is their own), and neither need be on this machine.
check_args() {
  [ -n "${LAUNCH_DRY_RUN:-}" ] && return 0
  if [ -n "${REJOINING:-}" ]; then set -- "$@" --rejoin; fi
  LOCAL_WORLD_SIZE=$PROCS "$PYTHON" "$ROOT/training/train.py" "$@" --check || exit $?
}

# train.py's arguments into the array args: DATA, CONFIG, DIST_TIMEOUT and RESUME from the
# environment, then the caller's; checked once here (check_args), for PROCS processes per machine.
train_args() {
  args=("$DATA" --config "$CONFIG")
  [ -n "${DIST_TIMEOUT:-}" ] && args+=("train.dist_timeout_s=$DIST_TIMEOUT")
  [ -n "${RESUME:-}" ] && args+=(--resume "$RESUME")
  args+=("$@")
  check_args "${args[@]}"
}

# Run the assembled torchrun command, or print it under LAUNCH_DRY_RUN=1. A rank that refuses bad
# input --check cannot see (an empty class folder, an unreadable image under data.bad_images=error)
# writes its error line to $FASTIMAGENET_REFUSED (training/refusal.py), and the restart torchrun
# then starts ends the group at once: on one machine before any work, across machines once the group
# has shared the note (each machine's note then holds the line). Then this says the line again, below
# torchrun's own report of the failed attempt, and exits 2. Not exec'd, so that status can be given.
# torchrun runs in its own session, so a terminal's Ctrl-C reaches it once, from here: TERM, INT and
# HUP to this shell (Ctrl-C, `kill`, `docker stop`, a batch system) are passed on as TERM, which
# stops the workers (each saves its last finished epoch); this waits for torchrun, then says what
# stopped the run and exits 128 + that signal (torchrun itself exits 1 on a signal).
run_or_print() {
  if [ -n "${LAUNCH_DRY_RUN:-}" ]; then
    for v in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME TORCH_DISABLE_SHARE_RDZV_TCP_STORE; do
      [ -n "${!v:-}" ] && echo "export $v=${!v}"
    done
    printf '%q ' "$@"
    echo
    exit 0
  fi
  local refused child status sig stopped=
  refused=$(mktemp "${TMPDIR:-/tmp}/fastimagenet-refused.XXXXXX") || {
    echo "error: cannot create a file in ${TMPDIR:-/tmp} (set TMPDIR to a writable folder)" >&2; exit 2; }
  trap 'rm -f "$refused"' EXIT
  FASTIMAGENET_REFUSED=$refused $(command -v setsid) "$@" &
  child=$!
  for sig in TERM INT HUP; do
    trap "stopped=$sig; kill -TERM \"\$child\" 2>/dev/null" "$sig"
  done
  # wait returns early (>128) when a trapped signal arrives; torchrun is then still running
  while wait "$child"; status=$?; [ "$status" -gt 128 ] && kill -0 "$child" 2>/dev/null; do :; done
  if [ -s "$refused" ]; then
    head -n 1 "$refused" >&2
    exit 2
  fi
  if [ -n "$stopped" ] && [ "$status" != 0 ]; then
    echo "stopped by SIG$stopped; continue the run with RESUME=auto (--resume auto)" >&2
    exit $((128 + $(kill -l "$stopped")))
  fi
  exit "$status"
}
