#!/usr/bin/env bash
# Installs Herald's OS tuning profile on a host, from the one profile file.
#
#   sudo ops/tuning/install.sh [profile.conf]
#
# Writes /etc/sysctl.d/60-herald.conf, /etc/security/limits.d/60-herald.conf and
# LimitNOFILE drop-ins for herald-server.service and the per-node template
# herald-server@.service (ops/systemd/), then loads the
# sysctls. The node itself can apply the same values live (POST /admin/tuning/apply);
# this script makes them survive a reboot. A `>=` item never lowers a host value
# that is already higher (nor `<=` raise one that is lower): the written value is
# the stricter of the profile's and the host's.
set -euo pipefail
profile="${1:-$(dirname "$0")/profile.conf}"
root="${HERALD_INSTALL_ROOT:-}"   # for a dry run into a scratch directory

sysctl_out="$root/etc/sysctl.d/60-herald.conf"
limits_out="$root/etc/security/limits.d/60-herald.conf"
unit_out="$root/etc/systemd/system/herald-server.service.d/60-nofile.conf"
template_out="$root/etc/systemd/system/herald-server@.service.d/60-nofile.conf"
mkdir -p "$(dirname "$sysctl_out")" "$(dirname "$limits_out")" "$(dirname "$unit_out")" \
  "$(dirname "$template_out")"

current() { cat "/proc/sys/${1//.//}" 2>/dev/null | tr -s '[:space:]' ' ' | sed 's/ $//'; }

{
  echo "# Generated from $(basename "$profile") by ops/tuning/install.sh; edit the profile, not this."
  sed -e 's/#.*//' "$profile" | while read -r key op value; do
    case "$key" in ""|profile|nofile) continue ;; esac
    have=$(current "$key")
    case "$op" in
      ">=") [ -n "$have" ] && [ "$have" -gt "$value" ] 2>/dev/null && value=$have ;;
      "<=") [ -n "$have" ] && [ "$have" -lt "$value" ] 2>/dev/null && value=$have ;;
    esac
    echo "$key = $value"
  done
} > "$sysctl_out"

nofile=$(awk '$1 == "nofile" { print $3 }' "$profile")
{
  echo "# Generated from $(basename "$profile") by ops/tuning/install.sh."
  echo "*    soft nofile $nofile"
  echo "*    hard nofile $nofile"
  echo "root soft nofile $nofile"
  echo "root hard nofile $nofile"
} > "$limits_out"

for out in "$unit_out" "$template_out"; do
  printf '# Generated from %s by ops/tuning/install.sh.\n[Service]\nLimitNOFILE=%s\n' \
    "$(basename "$profile")" "$nofile" > "$out"
done

echo "wrote $sysctl_out, $limits_out, $unit_out, $template_out"
if [ -z "$root" ]; then
  sysctl --load "$sysctl_out"
  systemctl daemon-reload 2>/dev/null || true
fi
