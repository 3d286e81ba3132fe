#!/usr/bin/env bash
# Installs Mesa's lavapipe (a CPU Vulkan driver) from Debian bookworm-backports so that Dawn
# (npm `webgpu`) finds a WebGPU adapter on machines without a GPU. Bookworm's own Mesa 22 is too
# old for Dawn; 25.x from backports works. Needs root; otherwise prints the commands and exits 1.
set -euo pipefail
if [ "$(id -u)" != "0" ]; then
  cat >&2 <<'MSG'
No WebGPU adapter found. Install Mesa's lavapipe (CPU Vulkan) from bookworm-backports as root:
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list
  apt-get update
  apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1
MSG
  exit 1
fi
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$( (grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'; \
            grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}') | grep -v security | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "deb ${mirror%/} bookworm-backports main" > /etc/apt/sources.list.d/backports.list
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
echo "lavapipe installed: $(dpkg -s mesa-vulkan-drivers | grep '^Version')"
