# Sourced by the launchers: run the assembled command, or print it under LAUNCH_DRY_RUN=1.
run_or_print() {
  if [ -n "${LAUNCH_DRY_RUN:-}" ]; then
    for v in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME TORCH_DISABLE_SHARE_RDZV_TCP_STORE; do
      [ -n "${!v:-}" ] && echo "export $v=${!v}"
    done
    printf '%q ' "$@"
    echo
    exit 0
  fi
  exec "$@"
}
